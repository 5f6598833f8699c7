"""The MLflow pyfunc flavour of a trained model (`microau-sweep train` logs it; `mlflow.pyfunc.load_model`
loads it).

Its one artifact, `package`, is the model package folder (`model.inference`); its code is this module,
imported from the installed microau-sweep (not copied into the model). Input: a DataFrame with the
columns `onset` and `apex`, paths of the two frames of each clip. Output: one row per clip with `id`,
`onset`, `apex`, `prob_AU<n>` (P(active)) and `pred_AU<n>` (decision) per AU, `mer_score_<class>` per
MER class and `mer_pred` (Eq. 13), the columns of `predict --out`.
"""
from __future__ import annotations

from collections.abc import Sequence

import mlflow.pyfunc
import pandas as pd

from model.inference import load_package
from orchestrator.serving.predictor import Predictor, flat


class MicroAUPythonModel(mlflow.pyfunc.PythonModel):
    """Loads the package with `orchestrator.serving.predictor.Predictor` (model_config `device`, default 'auto')."""

    def __init__(self):
        self.predictor = None

    def load_context(self, context) -> None:
        device = (context.model_config or {}).get("device", "auto")
        self.predictor = Predictor(load_package(context.artifacts["package"], device=device), "MLflow model")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        pairs = zip(frame["onset"].astype(str), frame["apex"].astype(str), strict=True)  # columns of one frame
        records = self.predictor.predict_pairs(list(pairs))
        return pd.DataFrame(flat(records), columns=output_columns(self.predictor.aus, self.predictor.model.mer_classes))


def output_columns(aus: Sequence[int], mer_classes: Sequence[str]):
    return (["id", "onset", "apex"] + [f"prob_AU{a}" for a in aus] + [f"pred_AU{a}" for a in aus]
            + [f"mer_score_{c}" for c in mer_classes] + ["mer_pred"])


def signature(aus: Sequence[int], mer_classes: Sequence[str]):
    """The model's MLflow signature: onset, apex (strings) in; the output columns above."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    kinds = {"prob_": "double", "pred_": "long", "mer_score_": "double"}
    outputs = [ColSpec(next((k for p, k in kinds.items() if c.startswith(p)), "string"), c)
               for c in output_columns(aus, mer_classes)]
    return ModelSignature(inputs=Schema([ColSpec("string", "onset"), ColSpec("string", "apex")]),
                          outputs=Schema(outputs))
