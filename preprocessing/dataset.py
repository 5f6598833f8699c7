"""`PreparedDataset`: what a dataset becomes after preprocessing; the only thing the model reads
(docs/architecture.md)."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.atomic import atomic_file
from preprocessing.errors import DatasetError


@dataclass
class PreparedDataset:
    reader: str  # casme2 | samm | casme3
    key: str  # content hash: sheet + frame files + preprocessing config + SCHEMA_VERSION
    sample_ids: list[str]  # `{subject}/{filename}`, unique
    subjects: list[str]  # subject per sample
    flow: np.ndarray  # float32 (S, 3, H, W): u, v, optical strain, each min-max normalised to [0, 1]
    landmarks: np.ndarray  # float32 (S, 68, 2): apex landmarks (x, y) in the flow image's pixels
    au_sets: list[list[int]]  # every AU coded for the sample, sorted
    emotions: list[str]  # emotion as written in the sheet
    mer: list[str | None]  # positive | negative | surprise | None (excluded)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {sample, reason}
    # Sheet quirks handled (empty in files written before they were recorded):
    apex_estimated: list[dict[str, Any]] = field(default_factory=list)  # {sample, apex, sheet: the cell}
    warnings: list[dict[str, str]] = field(default_factory=list)  # {sample, warning}
    corrected: list[dict[str, Any]] = field(default_factory=list)  # {sample, fields: {f: {sheet, corrected}}}

    def __post_init__(self):
        n = len(self.sample_ids)
        for name in ("subjects", "au_sets", "emotions", "mer"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PreparedDataset: {name} has {len(getattr(self, name))} entries, "
                                 f"sample_ids {n}")
        if self.flow.shape[0] != n or self.landmarks.shape[0] != n:
            raise ValueError(f"PreparedDataset: flow {self.flow.shape} / landmarks {self.landmarks.shape} "
                             f"do not have {n} samples")

    def __len__(self) -> int:
        return len(self.sample_ids)

    def labels(self, aus: Sequence[int]) -> np.ndarray:
        """Multi-hot uint8 (S, len(aus)): 1 where the AU is coded for the sample."""
        out = np.zeros((len(self), len(aus)), dtype=np.uint8)
        for i, s in enumerate(self.au_sets):
            for j, au in enumerate(aus):
                out[i, j] = au in s
        return out

    def subset(self, indices) -> PreparedDataset:
        """The samples at `indices` (a list of ints or a boolean mask), same key and skipped list."""
        idx = np.arange(len(self))[np.asarray(indices)] if len(indices) else np.zeros(0, dtype=int)
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return PreparedDataset(reader=self.reader, key=self.key, sample_ids=pick(self.sample_ids),
                               subjects=pick(self.subjects), flow=self.flow[idx],
                               landmarks=self.landmarks[idx], au_sets=pick(self.au_sets),
                               emotions=pick(self.emotions), mer=pick(self.mer), skipped=list(self.skipped),
                               apex_estimated=list(self.apex_estimated), warnings=list(self.warnings),
                               corrected=list(self.corrected))

    def summary(self) -> dict:
        """Counts for people and for `--json`: samples, subjects, au_counts, emotion_counts, mer_counts,
        skipped, apex_estimated, warnings, corrected."""
        au = Counter(a for s in self.au_sets for a in s)
        return {
            "reader": self.reader,
            "key": self.key,
            "samples": len(self),
            "subjects": len(set(self.subjects)),
            "subject_counts": dict(sorted(Counter(self.subjects).items())),
            "au_counts": {str(k): au[k] for k in sorted(au)},
            "emotion_counts": dict(sorted(Counter(self.emotions).items())),
            "mer_counts": dict(sorted(Counter(m or "excluded" for m in self.mer).items())),
            "skipped": list(self.skipped),
            "apex_estimated": list(self.apex_estimated),
            "warnings": list(self.warnings),
            "corrected": list(self.corrected),
        }

    # ---------------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write one .npz atomically (a temp file in the same folder, then os.replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"reader": self.reader, "key": self.key, "sample_ids": self.sample_ids,
                "subjects": self.subjects, "au_sets": self.au_sets, "emotions": self.emotions,
                "mer": self.mer, "skipped": self.skipped, "apex_estimated": self.apex_estimated,
                "warnings": self.warnings, "corrected": self.corrected}
        with atomic_file(path) as f:
            np.savez(f, flow=self.flow.astype(np.float32), landmarks=self.landmarks.astype(np.float32),
                     meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path) -> PreparedDataset:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                flow, landmarks = z["flow"], z["landmarks"]
        except Exception as e:  # noqa: BLE001 - not an npz, truncated, keys missing: prepare again
            raise DatasetError(f"{path}: cannot read the prepared dataset ({type(e).__name__}: {e}); "
                               f"delete the file and run preprocess again") from None
        return cls(flow=flow, landmarks=landmarks, **meta)
