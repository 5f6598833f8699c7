"""Use a trained model from Python: `load_model(path_or_uri)` and `predict(model, onset_frame, apex_frame)`.

    from orchestrator.api import load_model, predict
    model = load_model(".microau/models/<key>")          # or "runs:/<run id>/model", "models:/<name>/1"
    predict(model, "clip/img46.jpg", "clip/img59.jpg")  # {"probs": {"AU1": ...}, "preds": ..., "mer_pred": ...}

The public face of orchestrator/serving/: `load_model` returns a `Predictor` (a model package with the
preprocessing it was trained with; serving/predictor.py).
"""
from __future__ import annotations

from typing import Any

from orchestrator.serving.load import load_model
from orchestrator.serving.predictor import Frame, Predictor

__all__ = ["Predictor", "load_model", "predict"]


def predict(model: Predictor, onset_frame: Frame, apex_frame: Frame) -> dict[str, Any]:
    """One clip: onset and apex frames as image files or RGB uint8 arrays -> {probs: {AU: P(active)},
    preds: {AU: 0/1}, mer_pred, mer_scores: {class: score}, mer_text, trained_on: {...}}.

    Preprocessing is the dataset's (landmarks on the apex frame, face crop, magnification, optical
    flow); with Eulerian magnification a dataset's clip is magnified over all its frames onset..apex,
    which two frames cannot give: `model.predict_clip(folder, onset, apex)` reads them all."""
    return {**model.predict_frames(onset_frame, apex_frame), "trained_on": model.trained_on()}
