"""LSI module (paper III-B): landmark groups (Table I), landmark -> patch token (Eq. 1), patch token
attention (Eq. 2-3) and the Table VI / Table II alternatives (mean / max pooling, LSI off)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from model.regions import TABLE_I, LandmarkError, landmark_groups  # noqa: F401  (Table I lives there)


def landmark_to_token(xy: np.ndarray, grid: tuple[int, int], image: tuple[int, int]) -> np.ndarray:
    """Eq. 1: landmark (x, y) in an h0 x w0 image -> index of its patch token in the h x w grid,
    row-major as open_clip flattens the patch grid (row * w + col). (..., 2) -> (...) int64."""
    (h, w), (h0, w0) = grid, image
    col = np.clip(np.floor(xy[..., 0] * (w / w0)), 0, w - 1).astype(np.int64)
    row = np.clip(np.floor(xy[..., 1] * (h / h0)), 0, h - 1).astype(np.int64)
    return row * w + col


def au_token_indices(landmarks: np.ndarray, groups: Sequence[Sequence[int]], grid: tuple[int, int],
                     image: tuple[int, int], sample_ids: Sequence[str] | None = None) -> list[np.ndarray]:
    """Per AU, the patch token index of each of its landmarks for every sample: list of (S, N_L)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    bad = ~np.isfinite(lm).all(axis=(1, 2))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        name = sample_ids[i] if sample_ids is not None else f"#{i}"
        raise LandmarkError(f"sample {name}: landmarks are not finite; re-run preprocessing for it")
    return [landmark_to_token(lm[:, list(g)], grid, image) for g in groups]


class PTA(nn.Module):
    """Patch token attention for one AU: W_j = softmax_j(MLP(K_j)) (Eq. 2), F~ = sum_j W_j K_j (Eq. 3)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N_L, d) tokens -> AU feature (B, d), weights (B, N_L)."""
        w = torch.softmax(self.mlp(k).squeeze(-1), dim=-1)  # Eq. 2
        return (w.unsqueeze(-1) * k).sum(dim=1), w  # Eq. 3


class LocalFeatures(nn.Module):
    """F~_n for every AU, from the patch tokens (or, without LSI, the global image feature).

    lsi=True : each AU reads the tokens of its own landmarks (Eq. 1) and pools them with its own PTA
               (Eq. 2-3), or with mean / max pooling (Table VI).
    lsi=False (Table II, "w/o LSI"), as `lsi_off_feature` says:
      'shared_global'     no per-AU channel at all: every AU's F~_n is the same global image feature
                          (CLIP's class token after ln_post and proj), so the N features entering GSD
                          are identical copies; `pooling` plays no part.
      'per_au_all_tokens' each AU pools all h*w patch tokens with its own pooling module (its own PTA by
                          default): separate AU features, no landmark region prior.
    """

    def __init__(self, n_aus: int, d: int, pooling: str, lsi: bool, hidden: int, *, lsi_off_feature: str):
        super().__init__()
        if lsi_off_feature not in ("shared_global", "per_au_all_tokens"):
            raise ValueError(f"model.lsi_off_feature: 'shared_global' or 'per_au_all_tokens', "
                             f"got {lsi_off_feature!r}")
        self.n_aus, self.pooling, self.lsi = n_aus, pooling, lsi
        self.shared = not lsi and lsi_off_feature == "shared_global"
        self.pta = (nn.ModuleList([PTA(d, hidden) for _ in range(n_aus)])
                    if pooling == "pta" and not self.shared else None)

    def forward(self, tokens: torch.Tensor, idx: Sequence[torch.Tensor],
                global_feat: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """tokens (B, G, d), idx: per AU (B, N_L) token indices, global_feat (B, d) (read only by the
        shared-feature variant) -> F~ (B, N, d), PTA weights per AU (None where no PTA runs)."""
        if self.shared:
            if global_feat is None:
                raise ValueError("LocalFeatures with lsi_off_feature 'shared_global' needs the global "
                                 "image feature (global_feat)")
            # Table II "w/o LSI": one shared feature, the same for every AU
            return global_feat.unsqueeze(1).expand(-1, self.n_aus, -1), [None] * self.n_aus
        feats, weights = [], []
        for n in range(self.n_aus):
            if self.lsi:
                k = torch.gather(tokens, 1, idx[n].unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
            else:
                k = tokens
            if self.pooling == "pta":
                f, w = self.pta[n](k)
            elif self.pooling == "mean":
                f, w = k.mean(dim=1), None
            else:
                f, w = k.max(dim=1).values, None
            feats.append(f)
            weights.append(w)
        return torch.stack(feats, dim=1), weights
