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

    @classmethod
    def combine(cls, parts: Sequence[tuple[str, PreparedDataset]]) -> PreparedDataset:
        """Several prepared datasets as one training set (leave-one-dataset-out): [(name, dataset)] ->
        their samples in that order, each sample id and subject prefixed by its dataset's name
        (`casme2:sub01/EP02_01f`, `casme2:sub01`) so none collide; reader the names joined by '+'; key a
        hash of the names and the parts' keys; the parts' notes kept, their samples prefixed alike. The
        parts must share the flow image size (one preprocessing config)."""
        if len(parts) < 2:
            raise DatasetError(f"combine needs two or more datasets, got {[n for n, _ in parts]}")
        shapes = {n: d.flow.shape[1:] for n, d in parts}
        if len(set(shapes.values())) > 1:
            raise DatasetError(f"the datasets to combine have different flow image sizes {shapes}; prepare "
                               f"them with one preprocessing config")
        key = cls.combined_key([(n, d.key) for n, d in parts])

        def tag(name: str, notes: list[dict]) -> list[dict]:
            return [{**x, "sample": f"{name}:{x['sample']}"} if "sample" in x else dict(x) for x in notes]

        cat = lambda attr: [x for _, d in parts for x in getattr(d, attr)]  # noqa: E731
        return cls(reader="+".join(n for n, _ in parts), key=key,
                   sample_ids=[f"{n}:{s}" for n, d in parts for s in d.sample_ids],
                   subjects=[f"{n}:{s}" for n, d in parts for s in d.subjects],
                   flow=np.concatenate([d.flow for _, d in parts]),
                   landmarks=np.concatenate([d.landmarks for _, d in parts]),
                   au_sets=cat("au_sets"), emotions=cat("emotions"), mer=cat("mer"),
                   **{k: [x for n, d in parts for x in tag(n, getattr(d, k))]
                      for k in ("skipped", "apex_estimated", "warnings", "corrected")})

    @staticmethod
    def combined_key(keys: Sequence[tuple[str, str]]) -> str:
        """The key of `combine`'s dataset from [(name, key)] of its parts, without loading them."""
        import hashlib

        return hashlib.sha256(json.dumps([[n, k] for n, k in keys]).encode()).hexdigest()[:20]

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
