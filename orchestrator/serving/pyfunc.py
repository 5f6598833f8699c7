"""The MLflow pyfunc flavour of a trained model (`microau-sweep train` logs it; `mlflow.pyfunc.load_model`
loads it).

Its one artifact, `package`, is the model package folder (`model.inference`); its code is this module,
imported from the installed microau-sweep (not copied into the model). Input: a DataFrame with the
columns `onset` and `apex`, paths of the two frames of each clip. Output: one row per clip with `id`,
`onset`, `apex`, `prob_AU<n>` (P(active)) and `pred_AU<n>` (decision) per AU, `mer_score_<class>` per
MER class and `mer_pred` (Eq. 13), the columns of `predict --out`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from model.inference import ModelPackageError, load_package
from orchestrator.serving.predictor import Predictor, flat

# The models-from-code file MLflow copies into the model and runs on load (pyfunc_model.py), and the one an
# earlier version wrote (orchestrator/pyfunc_model.py, importing orchestrator.pyfunc): by SHA-256.
CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
EARLIER_CODE_SHA256 = {"8f05d3199557260c1096cdb0095bd9c380814578618fef4bfbef33fa3f717054"}


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


def check_model_code(folder: Path, name: str) -> None:
    """Refuse, before MLflow loads it, an MLflow model in `folder` that would run code other than this
    tool's own: MLflow runs a model's code file on load (models from code), imports its `loader_module`, puts
    its `code/` folders on sys.path and unpickles a `python_model.pkl`. Accepted: the python_function flavour
    with MLflow's own loader, no code folders, no pickle, and a code file byte for byte the one this version
    writes (or an earlier version wrote). `name`: the model as the user gave it, for the message."""
    from mlflow.models import Model

    try:
        flavour = Model.load(str(folder)).flavors.get("python_function") or {}
    except Exception as e:  # noqa: BLE001 - no or unreadable MLmodel
        raise ModelPackageError(f"{name}: not a readable MLflow model ({e})") from None
    code = flavour.get("model_code_path")
    why = None
    if flavour.get("loader_module") != "mlflow.pyfunc.loaders.code_model" or not code:
        why = "it is not a models-from-code pyfunc model"
    elif flavour.get("code") or flavour.get("python_model"):
        why = "it ships code folders or a pickled model"
    else:
        try:
            digest = hashlib.sha256((Path(folder) / Path(str(code)).name).read_bytes()).hexdigest()
        except OSError:
            digest = None
        if digest not in {hashlib.sha256(CODE_FILE.read_bytes()).hexdigest(), *EARLIER_CODE_SHA256}:
            why = f"its code file {Path(str(code)).name} is not the one microau-sweep writes"
    if why:
        raise ModelPackageError(f"{name}: refused: {why}, and MLflow would run that code when loading it. Load only "
                                f"models of `microau-sweep train` from a store you trust (docs/security.md); "
                                f"its package folder (<workdir>/models/<key>) loads without running any code")
