"""Motion magnification of the onset..apex clip (paper IV-A: learning-based, factor 3).

`factor` is the total motion magnification: the apex-onset displacement leaves it `factor` times larger.
The clip comes in as the face crops at native resolution, RGB uint8 (T, H, W, 3); what comes out is the
onset and the magnified apex as grey float images in [0, 1], on which the optical flow is computed.

- `none`: frames unchanged.
- `eulerian`: linear Eulerian magnification (Wu et al. 2012) on a Laplacian pyramid with an ideal temporal
  band-pass over the onset..apex frames, on the grey clip; needs no weights.
- `learned`: the two-frame network of Oh et al. 2018, with module names and shapes of the public PyTorch
  port ZhengPeng7/motion_magnification_learning-based (`magnet.py`), so its checkpoints load as they are,
  run as that port's inference code runs it (`learned`): RGB frames in [-1, 1], amplification `factor`.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from preprocessing.checkpoints import mismatch
from preprocessing.config import MagnificationConfig
from preprocessing.errors import DatasetError


# ---------------------------------------------------------------------------------------------------
# Eulerian (linear) magnification
# ---------------------------------------------------------------------------------------------------
def _laplacian_pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    bands, cur = [], img
    for _ in range(levels):
        down = cv2.pyrDown(cur)
        bands.append(cur - cv2.pyrUp(down, dstsize=(cur.shape[1], cur.shape[0])))
        cur = down
    return bands + [cur]  # `levels` band-pass images, then the low-pass residual


def _collapse(pyr: list[np.ndarray]) -> np.ndarray:
    cur = pyr[-1]
    for band in reversed(pyr[:-1]):
        cur = cv2.pyrUp(cur, dstsize=(band.shape[1], band.shape[0])) + band
    return cur


def eulerian(frames: np.ndarray, factor: float, low: float, high: float, levels: int) -> np.ndarray:
    """(T, H, W) float32 grey clip -> magnified clip. Each Laplacian band is filtered in time by an ideal
    band-pass [low, high] cycles/frame and added back times (factor - 1): a linear motion delta(t)
    becomes factor * delta(t) where the pass band holds its temporal spectrum (all of it but the mean
    when the band covers every non-zero frequency of the clip)."""
    t = frames.shape[0]
    if t < 2 or factor == 1:
        return frames.astype(np.float32)
    levels = max(1, min(levels, int(np.log2(min(frames.shape[1:]))) - 2))
    pyrs = [_laplacian_pyramid(f.astype(np.float32), levels) for f in frames]
    freqs = np.fft.rfftfreq(t)  # cycles per frame
    keep = (freqs >= low) & (freqs <= high) & (freqs > 0)
    alpha = factor - 1.0
    for lvl in range(levels):
        stack = np.stack([p[lvl] for p in pyrs])  # (T, h, w)
        spec = np.fft.rfft(stack, axis=0)
        spec[~keep] = 0
        filtered = np.fft.irfft(spec, n=t, axis=0).astype(np.float32)
        for i, p in enumerate(pyrs):
            p[lvl] = p[lvl] + alpha * filtered[i]
    return np.clip(np.stack([_collapse(p) for p in pyrs]), 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Learned magnification (Oh et al. 2018), state_dict-compatible with ZhengPeng7's port
# ---------------------------------------------------------------------------------------------------
def _build_magnet():
    import torch
    from torch import nn

    class ConvAct(nn.Module):  # key: <name>.conv2d.weight (no bias), reflection padding
        def __init__(self, cin, cout, k, stride, pad=0, relu=True):
            super().__init__()
            self.pad = nn.ReflectionPad2d(pad) if pad else nn.Identity()
            self.conv2d = nn.Conv2d(cin, cout, k, stride, bias=False)
            self.act = nn.ReLU() if relu else nn.Identity()

        def forward(self, x):
            return self.act(self.conv2d(self.pad(x)))

    class ResBlock(nn.Module):  # keys: cba_1, cba_2
        def __init__(self, cin, cout, mid=32):
            super().__init__()
            self.cba_1 = ConvAct(cin, mid, 3, 1, 1)
            self.cba_2 = ConvAct(mid, cout, 3, 1, 1, relu=False)

        def forward(self, x):
            return x + self.cba_2(self.cba_1(x))

    def blocks(n, c, mid=32):
        return nn.Sequential(*[ResBlock(c, c, mid) for _ in range(n)])

    class Encoder(nn.Module):  # frame -> texture (1/4 res), shape/motion (1/2 res)
        def __init__(self):
            super().__init__()
            self.cba_1 = ConvAct(3, 16, 7, 1, 3)
            self.cba_2 = ConvAct(16, 32, 3, 2, 1)
            self.resblks = blocks(3, 32)
            self.texture_cba = ConvAct(32, 32, 3, 2, 1)
            self.texture_resblks = blocks(2, 32)
            self.motion_cba = ConvAct(32, 32, 3, 1, 1)
            self.motion_resblks = blocks(2, 32)

        def forward(self, x):
            x = self.resblks(self.cba_2(self.cba_1(x)))
            return (self.texture_resblks(self.texture_cba(x)), self.motion_resblks(self.motion_cba(x)))

    class Manipulator(nn.Module):  # M_B + h(alpha * g(M_B - M_A))
        def __init__(self):
            super().__init__()
            self.g = ConvAct(32, 32, 3, 1, 1)
            self.h_conv = ConvAct(32, 32, 3, 1, 1, relu=False)
            self.h_resblk = ResBlock(32, 32)

        def forward(self, m_a, m_b, amp):
            return m_b + self.h_resblk(self.h_conv(self.g(m_b - m_a) * amp))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.resblks = blocks(9, 64, mid=64)
            self.cba_1 = ConvAct(64, 32, 3, 1, 1)
            self.cba_2 = ConvAct(32, 3, 7, 1, 3, relu=False)

        def forward(self, texture, motion):
            texture = nn.functional.interpolate(texture, scale_factor=2, mode="nearest")
            if texture.shape[-2:] != motion.shape[-2:]:
                texture = nn.functional.interpolate(texture, size=motion.shape[-2:])
            x = self.resblks(torch.cat([texture, motion], 1))
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            return self.cba_2(self.cba_1(x))

    class MagNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder()
            self.manipulator = Manipulator()
            self.decoder = Decoder()

        def forward(self, frame_a, frame_b, amp):
            """Frames (N, 3, H, W) in [-1, 1], amp (N, 1, 1, 1) -> frame_b with the a->b motion
            magnified, in about [-1, 1]: (N, 3, 2 ceil(H/2), 2 ceil(W/2)), as the port's decoder gives
            it (one pixel larger for an odd size; `learned` resizes it back as the port's inference
            code does)."""
            _, m_a = self.encoder(frame_a)
            t_b, m_b = self.encoder(frame_b)
            return self.decoder(t_b, self.manipulator(m_a, m_b, amp))

    return MagNet()


def MagNet():
    """A randomly initialised network (for tests and for writing checkpoints of the right structure)."""
    return _build_magnet()


WEIGHTS_HINT = ("set preprocessing.magnification.weights (or --magnet-weights) to a checkpoint of the "
                "PyTorch port ZhengPeng7/motion_magnification_learning-based (docs/datasets.md), or use "
                "preprocessing.magnification.method: eulerian, which needs no weights")


@functools.lru_cache(maxsize=2)
def load_magnet(weights: str):
    """The network with a checkpoint's weights; `module.` prefixes (DataParallel) are dropped and a
    {'state_dict': ...} / {'model': ...} wrapper is unwrapped."""
    import torch
    path = Path(weights).expanduser()
    if not path.is_file():
        raise DatasetError(f"{path}: magnification weights not found; {WEIGHTS_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a checkpoint, truncated, refused by weights_only
        raise DatasetError(f"{path}: cannot read the magnification checkpoint ({type(e).__name__}: {e}); "
                           f"{WEIGHTS_HINT}") from None
    for key in ("state_dict", "model", "net"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.replace("module.", "", 1) if k.startswith("module.") else k: v for k, v in state.items()}
    net = _build_magnet()
    why = mismatch(net.state_dict(), state, "the network")
    if why:
        raise DatasetError(f"{path}: not a checkpoint of the Oh et al. magnification network ({why}); "
                           f"{WEIGHTS_HINT}")
    net.load_state_dict(state)
    return net.eval()


def learned(onset: np.ndarray, apex: np.ndarray, factor: float, weights: str) -> np.ndarray:
    """The apex magnified against the onset, as the port's inference code (`test_video.py`, and the
    notebook `VMM_learning_based_demo.ipynb`) computes a frame.

    In: RGB frames (H, W, 3), uint8 or float in 0..255 (a grey frame as grey copied to three channels).
    Each is scaled to [-1, 1] as the port's data loader does (x / 127.5 - 1, channels first); the network
    gets (reference frame A = onset, frame B = apex, amplification `factor`): the port's inference passes
    the factor itself, and its training data (Oh et al.'s synthetic set) gives the total magnification of
    the motion relative to the reference frame. Out: RGB uint8 (H, W, 3), the output clipped to [-1, 1]
    and mapped back with round((y + 1) * 127.5); where the decoder gives one pixel more (an odd size) it
    is resized to the input's size with cubic interpolation, as the port's post-processing does.
    """
    import torch
    net = load_magnet(weights)

    def as_input(img):
        x = np.asarray(img, dtype=np.float64) / 127.5 - 1.0  # in float64, then float32, as the port
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))[None]

    with torch.no_grad():
        out = net(as_input(onset), as_input(apex), torch.full((1, 1, 1, 1), float(factor)))
    y = np.clip(out[0].numpy(), -1, 1)
    y = np.round((y.transpose(1, 2, 0) + 1.0) * 127.5).astype(np.uint8)
    h, w = apex.shape[:2]
    if y.shape[:2] != (h, w):
        y = cv2.resize(y, (w, h), interpolation=cv2.INTER_CUBIC)
    return y


def needs_clip(cfg: MagnificationConfig) -> bool:
    """Whether the method reads every frame onset..apex (eulerian) or only onset and apex."""
    return cfg.method == "eulerian"


def check(cfg: MagnificationConfig) -> None:
    """Fail before any work when `learned` has no usable weights."""
    if cfg.method == "learned":
        if not cfg.weights:
            raise DatasetError(f"preprocessing.magnification.method is 'learned' but no weights are "
                               f"given; {WEIGHTS_HINT}")
        load_magnet(str(cfg.weights))


def _grey(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) RGB uint8 -> (..., H, W) grey float32 in [0, 1]; a grey float clip as it is."""
    if frames.ndim >= 3 and frames.shape[-1] == 3 and frames.dtype == np.uint8:
        flat = frames.reshape(-1, *frames.shape[-3:])
        grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in flat])
        return (grey.reshape(frames.shape[:-1]).astype(np.float32) / 255.0)
    return frames.astype(np.float32)


def magnify(clip: np.ndarray, cfg: MagnificationConfig):
    """Clip (onset first, apex last) -> (onset, apex) after magnification, grey float32 in [0, 1].

    `clip`: RGB uint8 (T, H, W, 3), as the pipeline passes the face crops, or grey float (T, H, W) in
    [0, 1]. `eulerian` and `none` work on its grey version; `learned` on the RGB frames (a grey clip as
    grey copied to three channels), its magnified apex then made grey."""
    rgb = clip.ndim == 4
    if cfg.method == "none" or clip.shape[0] < 2:
        return _grey(clip[0]), _grey(clip[-1])
    if cfg.method == "eulerian":
        out = eulerian(_grey(clip), cfg.factor, cfg.low, cfg.high, cfg.levels)
        return out[0], out[-1]
    if cfg.method == "learned":
        check(cfg)
        frames = clip if rgb else np.repeat(clip[..., None] * 255.0, 3, axis=-1)
        apex = learned(frames[0], frames[-1], cfg.factor, str(cfg.weights))
        return _grey(clip[0]), _grey(apex)
    raise ValueError(f"unknown magnification method {cfg.method!r}")
