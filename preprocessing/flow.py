"""Onset -> apex optical flow image (paper III-A): channels u, v and optical strain, each min-max
normalised per image to [0, 1].

The flow is computed on the face crop at its native resolution (the frame's pixels); the 3-channel image
(u, v, strain) is then resized to the flow image's size, u and v multiplied by the resize's scale (so they
are in pixels of that grid; strain, a ratio of lengths, needs no scaling), and only then normalised.
Per-image min-max normalisation makes a positive global scale of u and v irrelevant to the result; the
scaling keeps the unnormalised field right, should the normalisation change.
"""
from __future__ import annotations

import cv2
import numpy as np

METHODS = ("tvl1", "farneback", "dis")


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def optical_flow(onset: np.ndarray, apex: np.ndarray, method: str = "tvl1") -> np.ndarray:
    """Dense flow (H, W, 2) float32 (u, v in pixels) from onset to apex; grey float images in [0, 1]."""
    a, b = _u8(onset), _u8(apex)
    if method == "tvl1":
        flow = cv2.optflow.DualTVL1OpticalFlow_create().calc(a, b, None)
    elif method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=15,
                                            iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
    elif method == "dis":
        flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(a, b, None)
    else:
        raise ValueError(f"unknown flow method {method!r}; use one of {', '.join(METHODS)}")
    return flow.astype(np.float32)


def optical_strain(flow: np.ndarray) -> np.ndarray:
    """Magnitude of the optical strain tensor e = (grad w + grad w^T) / 2 of the flow w = (u, v):
    sqrt(e_xx^2 + e_yy^2 + 2 e_xy^2)."""
    u, v = flow[..., 0], flow[..., 1]
    du_dy, du_dx = np.gradient(u)
    dv_dy, dv_dx = np.gradient(v)
    e_xy = 0.5 * (du_dy + dv_dx)
    return np.sqrt(du_dx ** 2 + dv_dy ** 2 + 2 * e_xy ** 2).astype(np.float32)


def minmax(channel: np.ndarray) -> np.ndarray:
    lo, hi = float(channel.min()), float(channel.max())
    if hi - lo < 1e-12:
        return np.zeros_like(channel, dtype=np.float32)
    return ((channel - lo) / (hi - lo)).astype(np.float32)


def resize_flow(channels: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C>=2) flow channels (u, v first, in pixels of the H x W image) -> (size, size, C) float32,
    u scaled by size / W and v by size / H (pixels of the new grid); further channels (strain) as they
    are. Area averaging when shrinking, bilinear when enlarging (no overshoot), pixel centres mapped as
    `landmarks.to_crop_grid` maps landmarks."""
    h, w = channels.shape[:2]
    if (h, w) == (size, size):
        return channels.astype(np.float32)
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    out = cv2.resize(channels.astype(np.float32), (size, size), interpolation=interp)
    out = out.reshape(size, size, -1)
    out[..., 0] *= size / w
    out[..., 1] *= size / h
    return out


def flow_image(flow: np.ndarray, size: int | None = None) -> np.ndarray:
    """(H, W, 2) flow -> float32 (3, size, size) (size None: H x W): u, v, optical strain computed at the
    flow's resolution, resized (`resize_flow`), each channel then min-max normalised to [0, 1]."""
    channels = np.dstack([flow[..., 0], flow[..., 1], optical_strain(flow)]).astype(np.float32)
    if size is not None:
        channels = resize_flow(channels, size)
    return np.stack([minmax(channels[..., c]) for c in range(3)])
