"""`FoldResult`: everything one LOSO fold produced (docs/architecture.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def f32_list(a) -> list:
    """float32 array -> nested lists of the shortest decimals that read back as the same float32 values
    (about half the JSON of full float64 reprs; from_dict restores the arrays bit for bit)."""
    a = np.asarray(a, dtype=np.float32)
    return a.astype(str).astype(np.float64).tolist()


def au_decisions(probs) -> np.ndarray:
    """AU decision: argmax of the 2-way softmax, i.e. P(active) > 0.5 (ties -> inactive); uint8."""
    return (np.asarray(probs) > 0.5).astype(np.uint8)


class Decisions:
    """AU decisions and MER classes of anything with `probs`, `mer_scores` and `mer_classes` (a fold's
    results, a model's predictions): one rule for both."""

    @property
    def preds(self) -> np.ndarray:
        """AU decision (`au_decisions`)."""
        return au_decisions(self.probs)

    @property
    def mer_preds(self) -> list[str]:
        """Eq. 13 argmax per sample (model.mer.mer_predict)."""
        from model.mer import mer_predict
        return mer_predict(self.mer_scores, self.mer_classes) if len(self.mer_scores) else []


@dataclass
class FoldResult(Decisions):
    test_subject: str
    seed: int
    aus: list[int]
    sample_ids: list[str]  # test samples
    subjects: list[str]
    probs: np.ndarray  # float32 (n, A): P(active) = softmax of the AU's 2-way head, index 1
    labels: np.ndarray  # uint8 (n, A)
    features: np.ndarray  # float32 (n, A, d): final AU visual features (Eq. 7's F_G + F~_n)
    mer_classes: list[str]  # order of the columns of mer_scores
    mer_scores: np.ndarray  # float32 (n, C): per class, the best Eq. 13 summed similarity of its label texts
    mer_labels: list[str | None]  # ground-truth MER class (None: excluded); never used in training
    loss_curve: dict[str, list[float]] = field(default_factory=dict)  # term -> value per epoch
    timings: dict[str, float] = field(default_factory=dict)  # seconds: prefix, build, train, eval, total
    n_train: int = 0
    # e.g. text_similarity (Table III TextSi), mer_texts ([class, text] of the R label texts) and
    # mer_best_text (each sample's best text)
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_subject": self.test_subject, "seed": int(self.seed), "aus": [int(a) for a in self.aus],
            "sample_ids": list(self.sample_ids), "subjects": list(self.subjects),
            "probs": f32_list(self.probs),
            "labels": np.asarray(self.labels, dtype=np.uint8).tolist(),
            "features": f32_list(self.features),
            "mer_classes": list(self.mer_classes),
            "mer_scores": f32_list(self.mer_scores),
            "mer_labels": list(self.mer_labels),
            "loss_curve": {k: [float(x) for x in v] for k, v in self.loss_curve.items()},
            "timings": {k: float(v) for k, v in self.timings.items()},
            "n_train": int(self.n_train), "extras": self.extras,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FoldResult:
        n, a = len(d["sample_ids"]), len(d["aus"])
        return cls(
            test_subject=d["test_subject"], seed=d["seed"], aus=list(d["aus"]),
            sample_ids=list(d["sample_ids"]), subjects=list(d["subjects"]),
            probs=np.asarray(d["probs"], dtype=np.float32).reshape(n, a),
            labels=np.asarray(d["labels"], dtype=np.uint8).reshape(n, a),
            features=(np.asarray(d["features"], dtype=np.float32).reshape(n, a, -1) if n * a
                      else np.zeros((n, a, 0), np.float32)),
            mer_classes=list(d["mer_classes"]),
            mer_scores=np.asarray(d["mer_scores"], dtype=np.float32).reshape(n, len(d["mer_classes"])),
            mer_labels=list(d["mer_labels"]), loss_curve={k: list(v) for k, v in d.get("loss_curve", {}).items()},
            timings=dict(d.get("timings", {})), n_train=int(d.get("n_train", 0)), extras=dict(d.get("extras", {})),
        )

    @classmethod
    def coerce(cls, r) -> FoldResult:
        return r if isinstance(r, cls) else cls.from_dict(r)
