"""Test helpers shared by several test modules (pytest puts tests/ on sys.path; test modules import
these, never each other). Sweep-level helpers are in support/sweeps.py.

`TEST_PREPROCESS`: the preprocessing the tests use. `fake_prepared`: a small flow-level stand-in for a
prepared CASME II dataset, for the model tests.

`fake_prepared` builds a real `preprocessing.PreparedDataset` without images, dlib or optical flow: a
fixed 68-point face template (jittered per sample) and flow images in which every active AU adds a
smooth motion blob around its Table I landmarks, on a noisy background. AU sets follow emotions as the
synthetic generator's do (happiness -> AU12, surprise -> AU1+2, negative -> AU4/7/14/15/17 mixtures).
The model tests that need the full preprocessing pipeline use the `prepared_casme2` fixture instead.
"""
from __future__ import annotations

import numpy as np

from preprocessing.config import QUICK_PREPROCESS
from preprocessing.dataset import PreparedDataset

CASME2_AUS = [1, 2, 4, 7, 12, 14, 15, 17]
TEST_PREPROCESS = QUICK_PREPROCESS  # fastest sensible preprocessing (preprocessing/config.py)


def face_template(size: int = 224) -> np.ndarray:
    """(68, 2) dlib-ordered landmarks of a frontal face filling a size x size crop."""
    s = size / 224.0
    pts = np.zeros((68, 2))
    t = np.linspace(-1, 1, 17)
    pts[0:17, 0] = 112 + 95 * t
    pts[0:17, 1] = 90 + 120 * (1 - t ** 2) ** 0.5
    pts[17:22] = np.c_[np.linspace(40, 100, 5), [62, 55, 52, 54, 58]]  # right brow (image left)
    pts[22:27] = np.c_[np.linspace(124, 184, 5), [58, 54, 52, 55, 62]]  # left brow
    pts[27:31] = np.c_[[112] * 4, np.linspace(78, 118, 4)]  # nose bridge
    pts[31:36] = np.c_[np.linspace(95, 129, 5), [128, 131, 133, 131, 128]]  # nostrils
    eye = lambda cx: np.c_[cx + np.array([-16, -8, 8, 16, 8, -8]), 84 + np.array([0, -5, -5, 0, 5, 5])]  # noqa
    pts[36:42], pts[42:48] = eye(66), eye(158)
    ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    pts[48:60] = np.c_[112 - 36 * np.cos(ang), 168 + 14 * np.sin(ang)]  # outer lip from the right corner
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    pts[60:68] = np.c_[112 - 24 * np.cos(ang), 168 + 6 * np.sin(ang)]
    return (pts * s).astype(np.float32)


def _au_sets(rng, n):
    """Emotion-driven AU sets: (au set, emotion, mer class)."""
    menu = [([12], "happiness", "positive"), ([1, 2], "surprise", "surprise"), ([4], "disgust", "negative"),
            ([4, 7], "disgust", "negative"), ([14], "repression", "negative"), ([15], "repression", "negative"),
            ([17], "disgust", "negative"), ([4, 15, 17], "others", None), ([], "others", None)]
    picks = rng.integers(0, len(menu), size=n)
    return [menu[i] for i in picks]


def fake_prepared(subjects: int = 4, per_subject: int = 8, seed: int = 0, signal: float = 0.25,
                  noise: float = 0.05, size: int = 224) -> PreparedDataset:
    from model.lsi import TABLE_I  # imported here: conftest imports this module, torch is not needed there

    rng = np.random.default_rng(seed)
    n = subjects * per_subject
    tmpl = face_template(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.empty((n, 3, size, size), np.float32)
    lms = np.empty((n, 68, 2), np.float32)
    sets = _au_sets(rng, n)
    for i in range(n):
        lm = tmpl + rng.normal(0, 1.5, size=tmpl.shape).astype(np.float32) + rng.normal(0, 3, size=2)
        lms[i] = np.clip(lm, 0, size - 1)
        img = 0.5 + noise * rng.standard_normal((3, size, size)).astype(np.float32)
        for au in sets[i][0]:
            c = lms[i][list(TABLE_I[au])].mean(0)
            blob = np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * (10 * size / 224) ** 2))
            direction = {1: (0, -1), 2: (0.5, -1), 4: (0, 1), 7: (0, -1), 12: (1, -1), 14: (-1, 0),
                         15: (0.5, 1), 17: (0, -1)}[au]
            img[0] += signal * direction[0] * blob
            img[1] += signal * direction[1] * blob
            img[2] += signal * blob
        mn, mx = img.min(axis=(1, 2), keepdims=True), img.max(axis=(1, 2), keepdims=True)
        flow[i] = (img - mn) / (mx - mn)
    subj = [f"sub{(i // per_subject) + 1:02d}" for i in range(n)]
    return PreparedDataset(
        reader="casme2", key=f"fake-{subjects}x{per_subject}-seed{seed}-s{signal}-n{noise}",
        sample_ids=[f"{s}/EP{i:02d}" for i, s in enumerate(subj)], subjects=subj, flow=flow, landmarks=lms,
        au_sets=[sorted(s[0]) for s in sets], emotions=[s[1] for s in sets], mer=[s[2] for s in sets])


def beats_constant_baselines(results, margin: float, folds: int, samples: int):
    """Pooled metrics of `results` after checking the fold and sample counts and that F1 beats both
    constant predictors (all positive, all negative) by `margin` on the same labels."""
    from model import metrics

    m, base = metrics.pooled_metrics(results), metrics.baselines(results)
    assert m["n_folds"] == folds and m["n_samples"] == samples
    assert m["f1"] > base["all_positive"]["f1"] + margin, (m["f1"], base)
    assert m["f1"] > base["all_negative"]["f1"] + margin, (m["f1"], base)
    return m, base
