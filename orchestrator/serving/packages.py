"""`microau-sweep train`: one grid point trained on every subject of a dataset, stored and logged as a model.

The model store is `<workdir>/models/<key>/`, one package per (resolved config, prepared data) written by
`model.inference.save_model` into a temp folder and renamed into place: a re-run with nothing changed
finds it and trains nothing; a package that does not read back is moved to `models/damaged/` with a
warning and trained again. The key hashes what the results store's fold keys hash, without a test
subject: the config hash (which holds the seed) and the prepared-data key.

The package's `info` records what the model was trained on (dataset, prepared-data key, subjects,
samples, sweep, point, seed) and that it has no held-out evaluation, so `predict` can say so.

MLflow: one run per model (tag `microau.model` = key) in the sweep's experiment, holding the config as
params and the package as an MLflow pyfunc model (`orchestrator/serving/pyfunc.py`) with its signature. As for
`run`, MLflow is a side channel: when it is unavailable, `train` warns, keeps the stored model and exits
0; a later `train` with nothing changed logs what is missing.
"""
from __future__ import annotations

import datetime
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from orchestrator.execution.trainable import prefix_for
from orchestrator.planning.store import ensure_writable
from orchestrator.serving import pyfunc
from orchestrator.spec.resolved import Sweep
from orchestrator.spec.schema import TrialConfig, stable_hash
from orchestrator.tracking.client import (
    TAG_KIND,
    TAG_SWEEP,
    Tracker,
    bounded_calls,
    fluent_tracking_uri,
    quiet_model_io,
)
from orchestrator.tracking.version import code_version, mlflow_tags

logger = logging.getLogger(__name__)

MODEL_STORE_VERSION = 1
TAG_MODEL = "microau.model"
TAG_MODEL_URI = "microau.model_uri"
EVALUATION_NOTE = ("none: trained on every subject of the dataset, no subject held out; the held-out estimate "
                   "of this configuration is the LOSO result of its point (microau-sweep report)")


def model_key(trial: TrialConfig, data_key: str) -> str:
    """The model store's key: the resolved config (seed included) on the prepared data."""
    from model.inference import SCHEMA_VERSION

    return stable_hash({"config": trial.hash, "data": data_key, "v": MODEL_STORE_VERSION,
                        "package": SCHEMA_VERSION})


@dataclass(frozen=True)
class ModelInfo:
    """What a package records of its training (the module docstring): written into the package as its
    `info` (model.inference.save_model) and read back by `predict`. One serialisation: `to_dict` /
    `from_dict` (a package written by an earlier version reads back with its fields as they were)."""
    key: str
    trained_on: dict[str, Any]  # dataset, reader, data_key, subjects, samples, skipped_samples
    evaluation: str
    sweep: str | None = None
    point: int | None = None
    point_label: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    config_hash: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the resolved TrialConfig
    preprocessing: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    code: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in d.items() if k in known and v is not None}
        return cls(**{"key": "", "trained_on": {}, "evaluation": "", **given})


@dataclass
class TrainOutcome:
    """What `train` did: the package `key` at `path`, trained now or found; its MLflow log."""
    key: str
    path: Path
    trained: bool  # False: the package was in the store already
    info: ModelInfo
    mlflow: dict[str, Any] = field(default_factory=dict)  # run_id, model_uri, logged, registered, error


def stored_package(root: Path, key: str) -> Path | None:
    """The intact package of `key` in the store, else None; a damaged one is moved to `damaged/` with a
    warning (it is trained again)."""
    from model.inference import ModelPackageError, check_package

    path = root / key
    if not path.exists():
        return None
    try:
        check_package(path)
        return path
    except ModelPackageError as e:
        folder = root / "damaged"
        folder.mkdir(parents=True, exist_ok=True)
        target, n = folder / key, 1
        while target.exists():
            target, n = folder / f"{key}.{n}", n + 1
        os.replace(path, target)
        logger.warning(f"warning: {e}; moved to {target}; the model is trained again")
        return None


def training_info(sweep: Sweep, trial: TrialConfig, data, key: str) -> ModelInfo:
    """What the package records of its training (module docstring)."""
    return ModelInfo(
        key=key,
        trained_on={"dataset": trial.dataset, "reader": trial.reader, "data_key": data.key,
                    "subjects": sorted(set(map(str, data.subjects))), "samples": len(data.sample_ids),
                    "skipped_samples": [str(s["sample"]) for s in (data.skipped or [])]},
        evaluation=EVALUATION_NOTE,
        sweep=sweep.name, point=trial.point, point_label=trial.point_label, params=dict(trial.params),
        seed=trial.seed, config_hash=trial.hash,
        config=trial.model_dump(mode="json"),
        preprocessing=trial.preprocessing.model_dump(mode="json"),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        code=dict(code_version()),
    )


def train_and_store(sweep: Sweep, trial: TrialConfig, data, on_epoch=None) -> TrainOutcome:
    """The stored model of `trial` on `data`, trained now (on every subject, `model.inference.train_model`)
    unless the store holds it."""
    from model.inference import read_meta, save_model, train_model  # torch: when a model is trained

    root = sweep.paths.models
    key = model_key(trial, data.key)
    found = stored_package(root, key)
    if found is not None:
        return TrainOutcome(key=key, path=found, trained=False, info=ModelInfo.from_dict(read_meta(found)["info"]))
    ensure_writable(root, "models folder", "the trained model could not be stored")
    info = training_info(sweep, trial, data, key)
    prefix = prefix_for(trial, data, sweep.paths.cache)
    fitted = train_model(trial, data, prefix=prefix, on_epoch=on_epoch)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a shared workdir wants the usual mode
    try:
        save_model(fitted, trial, tmp, info.to_dict())
        try:
            os.rename(tmp, root / key)
        except OSError:
            if stored_package(root, key) is None:  # not another process's finished package
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TrainOutcome(key=key, path=root / key, trained=True, info=info)


# -- MLflow ------------------------------------------------------------------------------------------
def pip_requirements() -> list[str]:
    """The environment an MLflow model of this tool needs: this package's own dependencies (the code is
    not copied into the model: load it where microau-sweep is installed)."""
    from importlib import metadata

    try:
        reqs = metadata.requires("microau-sweep") or []
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return []
    return [r for r in reqs if "extra ==" not in r]


def log_model(sweep: Sweep, trial: TrialConfig, outcome: TrainOutcome, register: str | None = None
              ) -> dict[str, Any]:
    """Log the stored model to the sweep's MLflow experiment as a pyfunc model, once (found again by the
    tag `microau.model`); `register`: also register it under that name (a new version). Raises on any
    tracking failure (the caller warns: MLflow is a side channel)."""
    import mlflow  # heavy: imported when a model is logged, for start-up time
    from mlflow.entities import RunTag

    from model.inference import read_meta

    tracker = Tracker(sweep)  # bounded first contact; creates the experiment where missing
    client = tracker.client
    out: dict[str, Any] = {"logged": False}
    with bounded_calls(), fluent_tracking_uri(tracker.uri):
        runs = client.search_runs([tracker.experiment_id], f"tags.`{TAG_MODEL}` = '{outcome.key}'", max_results=5)
        done = [r for r in runs if r.data.tags.get(TAG_MODEL_URI)]
        if done:
            out.update(run_id=done[0].info.run_id, model_uri=done[0].data.tags[TAG_MODEL_URI])
        else:
            t = outcome.info.trained_on
            tags = {**mlflow_tags(), TAG_MODEL: outcome.key, TAG_KIND: "model", TAG_SWEEP: sweep.name,
                    "dataset": trial.dataset, "point": trial.point_label, "seed": str(trial.seed),
                    "config_hash": trial.hash, "data_key": t["data_key"],
                    "trained_on_subjects": ",".join(t["subjects"])[:5000], "evaluation": EVALUATION_NOTE}
            if runs:  # a run left without its model by an interrupted train
                run_id = runs[0].info.run_id
            else:
                run_id = client.create_run(tracker.experiment_id, tags=tags,
                                           run_name=f"model:{trial.dataset}:{trial.point_label}:seed{trial.seed}"
                                           ).info.run_id
                tracker.log_params(run_id, {**trial.flat_params(), "model_key": outcome.key,
                                             "trained_on_samples": t["samples"]})
            meta = read_meta(outcome.path)
            with mlflow.start_run(run_id=run_id), quiet_model_io():
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(Path(pyfunc.__file__).with_name("pyfunc_model.py")),
                    artifacts={"package": str(outcome.path)},
                    signature=pyfunc.signature(meta["aus"], meta["mer_classes"]), pip_requirements=pip_requirements(),
                    metadata={"microau_model_key": outcome.key, "evaluation": EVALUATION_NOTE})
            client.log_batch(run_id, tags=[RunTag(TAG_MODEL_URI, info.model_uri)])
            client.set_terminated(run_id, "FINISHED")
            out.update(run_id=run_id, model_uri=info.model_uri, logged=True)
        if register:
            version = mlflow.register_model(out["model_uri"], register)
            out["registered"] = {"name": register, "version": str(version.version),
                                 "uri": f"models:/{register}/{version.version}"}
    return out
