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


def pad_token_indices(tok: Sequence[np.ndarray] | Sequence[torch.Tensor]):
    """Per-AU token indices, a list of (S, N_L) with N_L per AU, -> one (S, N, max N_L) array / tensor padded
    at the end with -1 (what `LocalFeatures` reads: every AU in one batched operation)."""
    if isinstance(tok[0], torch.Tensor):
        width = max(t.shape[1] for t in tok)
        return torch.stack([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1) for t in tok], dim=1)
    width = max(t.shape[1] for t in tok)
    return np.stack([np.pad(t, ((0, 0), (0, width - t.shape[1])), constant_values=-1) for t in tok], axis=1)


def token_counts(tok: torch.Tensor | np.ndarray) -> list[int]:
    """N_L of each AU in a padded (S, N, L) index array (its landmark tokens come first, then -1)."""
    return [int(v) for v in (tok[0] >= 0).sum(-1).tolist()]


class PerAUMLP(nn.Module):
    """N independent MLPs Linear(d_in, hidden) -> ReLU -> Linear(hidden, d_out), one per AU, as stacked
    weights (w1 (N, hidden, d_in), b1 (N, hidden), w2 (N, d_out, hidden), b2 (N, d_out): nn.Linear's
    layout per AU) applied to every AU at once with batched matmuls. (N, M, d_in) -> (N, M, d_out).

    The weights are initialised by building the N per-AU nn.Sequential modules the model had before they
    were stacked, in the same order, so a seed gives the same initial weights (and the same later draws).
    A state dict of that per-AU layout (`{prefix}{n}.0.weight`, `...0.bias`, `...2.weight`, `...2.bias`)
    is stacked on load."""

    def __init__(self, n: int, d_in: int, hidden: int, d_out: int):
        super().__init__()
        mlps = [nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out)) for _ in range(n)]
        for name, (i, attr) in _LAYERS.items():
            setattr(self, name, nn.Parameter(torch.stack([getattr(m[i], attr).detach() for m in mlps])))
        self.n = n
        self._register_load_state_dict_pre_hook(self._stack_per_au_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.baddbmm(self.b1.unsqueeze(1), x, self.w1.transpose(1, 2)))
        return torch.baddbmm(self.b2.unsqueeze(1), h, self.w2.transpose(1, 2))

    def _stack_per_au_keys(self, state, prefix, *args, **kwargs):
        for name, (i, attr) in _LAYERS.items():
            keys = [f"{prefix}{n}.{i}.{attr}" for n in range(self.n)]
            if keys[0] in state and prefix + name not in state:
                state[prefix + name] = torch.stack([state.pop(k) for k in keys if k in state])


_LAYERS = {"w1": (0, "weight"), "b1": (0, "bias"), "w2": (2, "weight"), "b2": (2, "bias")}


class PTA(nn.Module):
    """Patch token attention, one per AU (its own MLP), all AUs at once: W_j = softmax_j(MLP_n(K_j)) (Eq. 2),
    F~_n = sum_j W_j K_j (Eq. 3)."""

    def __init__(self, n_aus: int, d: int, hidden: int):
        super().__init__()
        self.mlp = PerAUMLP(n_aus, d, hidden, 1)
        self.n_aus = n_aus
        self._register_load_state_dict_pre_hook(self._per_au_keys)

    def _per_au_keys(self, state, prefix, *args, **kwargs):
        """The per-AU layout's `{prefix}{n}.mlp.*` -> `{prefix}mlp.{n}.*`, which PerAUMLP then stacks."""
        for n in range(self.n_aus):
            old = f"{prefix}{n}.mlp."
            for k in [k for k in state if k.startswith(old)]:
                state[f"{prefix}mlp.{n}.{k[len(old):]}"] = state.pop(k)

    def forward(self, k: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, B, N_L, d) tokens, (N, B, N_L) True where a token is one of the AU's (None: all are) -> AU
        features (N, B, d), weights (N, B, N_L) (0 on padding)."""
        n, b, n_l, d = k.shape
        score = self.mlp(k.reshape(n, b * n_l, d)).view(n, b, n_l)
        if valid is not None:
            score = score.masked_fill(~valid, float("-inf"))
        w = torch.softmax(score, dim=-1)  # Eq. 2
        return (w.unsqueeze(-1) * k).sum(dim=2), w  # Eq. 3


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
    All AUs run as one batched operation: the AUs' landmark tokens are padded to the longest group
    (`pad_token_indices`) and the padding is masked out of every pooling.
    """

    def __init__(self, n_aus: int, d: int, pooling: str, lsi: bool, hidden: int, *, lsi_off_feature: str):
        super().__init__()
        if lsi_off_feature not in ("shared_global", "per_au_all_tokens"):
            raise ValueError(f"model.lsi_off_feature: 'shared_global' or 'per_au_all_tokens', "
                             f"got {lsi_off_feature!r}")
        self.n_aus, self.pooling, self.lsi = n_aus, pooling, lsi
        self.shared = not lsi and lsi_off_feature == "shared_global"
        self.pta = PTA(n_aus, d, hidden) if pooling == "pta" and not self.shared else None

    def forward(self, tokens: torch.Tensor, idx: torch.Tensor | Sequence[torch.Tensor] | None,
                global_feat: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tokens (B, G, d); idx: token indices (B, N, L) padded with -1 (`pad_token_indices`), or per AU a
        (B, N_L) tensor; global_feat (B, d) (read only by the shared-feature variant) -> F~ (B, N, d), PTA
        weights (B, N, L) (0 on padding; L = G without LSI), None where no PTA runs."""
        if self.shared:
            if global_feat is None:
                raise ValueError("LocalFeatures with lsi_off_feature 'shared_global' needs the global "
                                 "image feature (global_feat)")
            # Table II "w/o LSI": one shared feature, the same for every AU
            return global_feat.unsqueeze(1).expand(-1, self.n_aus, -1), None
        b, g, d = tokens.shape
        if self.lsi:
            if not isinstance(idx, torch.Tensor):
                idx = pad_token_indices(list(idx))
            at = idx.transpose(0, 1)  # (N, B, L): AU-major
            valid = at >= 0
            rows = torch.arange(b, device=tokens.device).view(1, b, 1)
            k = tokens[rows, at.clamp(min=0)]  # (N, B, L, d): each AU's landmark tokens (Eq. 1), padded
        else:
            k, valid = tokens.unsqueeze(0).expand(self.n_aus, b, g, d), None
        if self.pooling == "pta":
            f, w = self.pta(k, valid)
            return f.transpose(0, 1), w.transpose(0, 1)
        if self.pooling == "mean":
            if valid is None:
                f = k.mean(dim=2)
            else:
                f = (k * valid.unsqueeze(-1)).sum(dim=2) / valid.sum(-1, keepdim=True)
        else:
            f = (k if valid is None else k.masked_fill(~valid.unsqueeze(-1), float("-inf"))).amax(dim=2)
        return f.transpose(0, 1), None
