"""A trained model with the preprocessing it was trained with: what `load_model` returns.

A `Predictor` is a model package (`model.inference`) with its preprocessing config: every clip goes through
the data layer's checks and `pipeline.process_sample`, as the dataset's samples did
(`preprocessing.frames`), then through `AUModel.predict`. The `predict` command, the MLflow pyfunc model
(orchestrator/serving/pyfunc.py) and the Python API (orchestrator/api.py) all call `Predictor.run`.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from model.inference import ModelPackageError
from orchestrator.planning.data import expand_paths
from preprocessing.config import PreprocessConfig
from preprocessing.frames import ClipError, files_sample, folder_sample, preprocess_clips

PathLike = str | os.PathLike
Frame = PathLike | np.ndarray


class Predictor:
    """A loaded model and the preprocessing it was trained with (what `load_model` returns)."""

    def __init__(self, model, source: str):
        self.model = model  # model.inference.AUModel
        self.source = source
        self.info: dict[str, Any] = model.info
        try:
            cfg = PreprocessConfig.model_validate(self.info["preprocessing"])
        except Exception as e:  # noqa: BLE001 - a package from elsewhere
            raise ModelPackageError(f"{source}: the model records no usable preprocessing config ({e}); train "
                                    f"it again with microau-sweep train") from None
        self.preprocessing = expand_paths(cfg, f"{source}: preprocessing")  # ${VAR} in model file paths

    @property
    def aus(self) -> list[int]:
        return list(self.model.aus)

    @property
    def reader(self) -> str:
        return str(self.info.get("trained_on", {}).get("reader") or self.info.get("config", {}).get("reader")
                   or "casme2")

    def trained_on(self) -> dict[str, Any]:
        """What the model was trained on and how (printed by `predict`): dataset, reader, prepared-data
        key, subjects, samples, sweep, point, seed, and the note that it has no held-out evaluation."""
        i = self.info
        return {"model": i.get("key"), **dict(i.get("trained_on", {})), "sweep": i.get("sweep"),
                "point": i.get("point"), "point_label": i.get("point_label"), "seed": i.get("seed"),
                "config_hash": i.get("config_hash"), "created": i.get("created"), "evaluation": i.get("evaluation")}

    def run(self, samples, on_error: Literal["stop", "skip"] = "stop", progress=None):
        """Preprocess `samples` (preprocessing.frames) and predict -> (records, Clips): one record per
        usable clip (`record`), the Clips with the problems of those left out (on_error="skip")."""
        clips = preprocess_clips(samples, self.preprocessing, on_error=on_error, progress=progress)
        preds = self.model.predict(clips.flow, clips.landmarks, [s.id for s in clips.samples])
        return [record(preds, i, s) for i, s in enumerate(clips.samples)], clips

    def predict_frames(self, onset: Frame, apex: Frame) -> dict[str, Any]:
        """One clip given by its onset and apex frames: image files, or RGB uint8 arrays (H, W, 3)."""
        with FramesAsFiles(onset, apex) as (a, b):
            return self.run([files_sample(a, b, reader=self.reader)])[0][0]

    def predict_pairs(self, pairs: Sequence[tuple[PathLike, PathLike]]) -> list[dict[str, Any]]:
        """Clips given as (onset file, apex file) pairs, in one batch (the MLflow pyfunc model's input)."""
        samples = [files_sample(a, b, reader=self.reader, name=f"{i}") for i, (a, b) in enumerate(pairs)]
        return self.run(samples)[0]

    def predict_clip(self, folder: PathLike, onset: int, apex: int) -> dict[str, Any]:
        """One clip given as frame numbers in a folder of numbered frames."""
        return self.run([folder_sample(folder, onset, apex, reader=self.reader)])[0][0]


def record(preds, i: int, sample) -> dict[str, Any]:
    """Clip `i` of `Predictions` as a plain dict: id, frames, P(active) and decision per AU, the zero-shot
    MER class (Eq. 13), its scores per class and the label text that decided it."""
    aus = [f"AU{a}" for a in preds.aus]
    dec = preds.preds[i]
    frames = sample.frames
    out = {"id": sample.id, "onset": str(frames.get(sample.onset, sample.onset)),
           "apex": str(frames.get(sample.apex, sample.apex)),
           "probs": {a: float(preds.probs[i, j]) for j, a in enumerate(aus)},
           "preds": {a: int(dec[j]) for j, a in enumerate(aus)}}
    if len(preds.mer_classes):
        out["mer_pred"] = preds.mer_preds[i]
        out["mer_scores"] = {c: float(preds.mer_scores[i, j]) for j, c in enumerate(preds.mer_classes)}
        out["mer_text"] = int(preds.best_text[i])
    if sample.row:  # a sheet's row: what the sheet says, for comparison (never used to predict)
        out.update(subject=sample.subject, onset_frame=sample.onset, apex_frame=sample.apex,
                   sheet_aus=sample.au_text, sheet_emotion=sample.emotion)
    return out


def flat(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records as flat rows (CSV, the pyfunc model's output): prob_AU1 ..., pred_AU1 ..., mer_score_<class>
    ..., mer_pred, as the results store's predictions.csv names them."""
    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if not isinstance(v, dict) and k != "mer_text"}
        row.update({f"prob_{a}": p for a, p in r["probs"].items()})
        row.update({f"pred_{a}": d for a, d in r["preds"].items()})
        row.update({f"mer_score_{c}": s for c, s in r.get("mer_scores", {}).items()})
        if "mer_pred" in r:
            row["mer_pred"] = row.pop("mer_pred")
        rows.append(row)
    return rows


class FramesAsFiles:
    """Frames given as arrays written to a temp folder as lossless PNG (read back bit for bit), so they take
    the same path as files; paths are passed through."""

    def __init__(self, *frames: Frame):
        self.frames = frames
        self.tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> list[str]:
        out = []
        for i, f in enumerate(self.frames):
            if isinstance(f, np.ndarray):
                if f.dtype != np.uint8 or f.ndim not in (2, 3) or (f.ndim == 3 and f.shape[2] != 3):
                    raise ClipError(f"frame {i + 1}: an array frame must be RGB uint8 (H, W, 3) or grey uint8 "
                                    f"(H, W), got {f.dtype} {f.shape}")
                if self.tmp is None:
                    self.tmp = tempfile.TemporaryDirectory(prefix="microau-predict-")
                path = Path(self.tmp.name) / f"frame{i}.png"
                cv2.imwrite(str(path), f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
                out.append(str(path))
            else:
                out.append(os.fspath(f))
        return out

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()
