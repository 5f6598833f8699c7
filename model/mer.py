"""Emotion-label-free MER (paper III-E, Eq. 13): every class has one or more label texts LF_r
(model/text.py: emotion_texts); MaxME picks the text of largest summed similarity and the class is its
class. A class's score is the best of its texts' scores."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: reports read predictions without it
    import torch


def mer_scores(au_features: torch.Tensor, emotion_features: torch.Tensor) -> torch.Tensor:
    """Eq. 13 before MaxME: score_r = sum_n CS(F_n^V, LF_r^T), one per label text r.
    au_features (S, N, d) final AU visual features; emotion_features (R, d) -> (S, R)."""
    import torch
    import torch.nn.functional as F

    v = F.normalize(au_features, dim=-1)
    e = F.normalize(emotion_features, dim=-1)
    return torch.einsum("snd,rd->sr", v, e)


def mer_class_scores(text_scores: torch.Tensor, text_class: torch.Tensor, n_classes: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 13's MaxME over all R texts, kept per class: text_scores (S, R), text_class (R,) the class
    index of each text -> (class scores (S, C): the best score of each class's texts, best text (S,):
    the argmax over all R texts). The argmax of the class scores is the class of the best text."""
    import torch

    text_class = torch.as_tensor(text_class, device=text_scores.device)
    missing = [c for c in range(n_classes) if not bool((text_class == c).any())]
    if missing:
        raise ValueError(f"MER classes {missing} have no label text; every class needs at least one")
    scores = torch.stack([text_scores[:, text_class == c].amax(dim=-1) for c in range(n_classes)], dim=-1)
    return scores, text_scores.argmax(dim=-1)


def mer_predict(scores, classes: Sequence[str]) -> list[str]:
    """Eq. 13: MaxME, the class with the largest summed similarity (per class: its best text's)."""
    idx = np.asarray(scores).argmax(axis=-1).tolist()  # the first of equal maxima, as torch.argmax
    return [classes[i] for i in idx]
