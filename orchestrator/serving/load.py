"""Loading a trained model: a package folder of `microau-sweep train`, or an MLflow model of it."""
from __future__ import annotations

import os
from pathlib import Path

from model.inference import ModelPackageError, load_package
from orchestrator.serving.predictor import PathLike, Predictor
from orchestrator.tracking.client import fluent_tracking_uri, quiet_model_io, reason, redact
from preprocessing.errors import MicroAUError


def load_model(path_or_uri: PathLike, device: str = "auto", tracking_uri: str | None = None) -> Predictor:
    """A model ready to predict: the package folder `microau-sweep train` printed (`<workdir>/models/<key>`),
    a folder holding an MLflow model of it (its `MLmodel` file), or an MLflow model URI (`runs:/<run id>/model`,
    `models:/<name>/<version>`, `models:/<model id>`) read from `tracking_uri` (default: MLflow's,
    e.g. $MLFLOW_TRACKING_URI). `device`: 'auto' (CUDA when available), 'cpu', 'cuda:1', ...
    The backbone weights it was trained with must be on this machine (a missing file is named)."""
    text = os.fspath(path_or_uri)
    path = Path(text).expanduser()
    if path.is_dir() and not (path / "MLmodel").is_file():
        return Predictor(load_package(path, device=device), str(path))
    if path.is_dir() or "://" in text or text.startswith(("runs:/", "models:/")):
        return _load_mlflow(str(path) if path.is_dir() else text, device, tracking_uri)
    raise ModelPackageError(f"{text}: no such model folder or MLflow model URI; give the folder `microau-sweep "
                            f"train` printed (<workdir>/models/<key>) or a runs:/ or models:/ URI")


def _load_mlflow(uri: str, device: str, tracking_uri: str | None) -> Predictor:
    import mlflow  # heavy: only for a model read from MLflow, for start-up time

    # imports mlflow.pyfunc: see above
    from orchestrator.serving.pyfunc import MicroAUPythonModel, check_model_code

    try:
        with fluent_tracking_uri(tracking_uri), quiet_model_io():
            # a local copy first: its code is checked before MLflow runs any of it (docs/security.md)
            local = uri if Path(uri).is_dir() else mlflow.artifacts.download_artifacts(artifact_uri=uri)
            check_model_code(Path(local), uri)
            loaded = mlflow.pyfunc.load_model(local, model_config={"device": device})
    except MicroAUError:
        raise
    except Exception as e:  # noqa: BLE001 - unknown run or model, unreachable store, not a model
        where = f" (tracking URI {redact(tracking_uri)})" if tracking_uri else ""
        raise ModelPackageError(f"{uri}: cannot load the MLflow model{where}: {reason(e, tracking_uri)}; check the "
                                f"URI (the `train` command printed it) and --tracking-uri") from None
    inner = loaded.unwrap_python_model()
    if not isinstance(inner, MicroAUPythonModel):
        raise ModelPackageError(f"{uri}: an MLflow model, but not one of microau-sweep train "
                                f"({type(inner).__name__})")
    return inner.predictor
