"""Emotion-label-free MER (paper III-E, Eq. 13)."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F


def mer_scores(au_features: torch.Tensor, emotion_features: torch.Tensor) -> torch.Tensor:
    """Eq. 13 before the argmax: score_r = sum_n CS(F_n^V, LF_r^T).
    au_features (S, N, d) final AU visual features; emotion_features (R, d) -> (S, R)."""
    v = F.normalize(au_features, dim=-1)
    e = F.normalize(emotion_features, dim=-1)
    return torch.einsum("snd,rd->sr", v, e)


def mer_predict(scores, classes: Sequence[str]) -> List[str]:
    """Eq. 13: MaxME, the class with the largest summed similarity."""
    idx = torch.as_tensor(scores).argmax(dim=-1).tolist()
    return [classes[i] for i in idx]
