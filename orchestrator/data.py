"""Prepare a sweep's datasets: expand roots, generate synthetic data on first use, use the cache.

Every prepared dataset of a sweep is cached under `<workdir>/cache` by the preprocessing layer's content
hash, so a second run (or another sweep over the same data and preprocessing) reads one .npz.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Optional

from orchestrator.config import ConfigError, SweepSpec, TrialConfig, expand_env, stable_hash


def dataset_root(spec: SweepSpec, name: str) -> Path:
    """The dataset's root with `${VAR}` expanded; a ConfigError naming the variable when it is unset."""
    ds = spec.datasets[name]
    return Path(expand_env(ds.root, f"{spec.source}: datasets.{name}.root")).expanduser()


def ensure_synthetic(spec: SweepSpec, name: str, progress: bool = True) -> Optional[Path]:
    """Generate the synthetic dataset of `datasets.<name>.synthetic` when its root is missing or empty.

    Returns the root when it generated something, else None.
    """
    ds = spec.datasets[name]
    root = dataset_root(spec, name)
    if ds.synthetic is None:
        return None
    if root.is_dir() and any(root.iterdir()):
        return None
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{spec.source}: datasets.{name}.root {root} is a file, not a folder")
    from preprocessing import synth

    s = ds.synthetic
    if progress:
        print(f"[{name}] generating a synthetic {ds.reader} dataset in {root} "
              f"({s.subjects} subjects x {s.per_subject} samples, seed {s.seed})", flush=True)
    synth.generate(root, ds.reader, s.subjects, s.per_subject, s.seed, intensity=s.intensity, noise=s.noise)
    return root


def data_id(trial: TrialConfig) -> str:
    """Which prepared dataset a trial reads: its dataset under its preprocessing config. A grid or a
    variant may vary `preprocessing.*`; each distinct setting is prepared (and cached) once."""
    return f"{trial.dataset}@{stable_hash(trial.preprocessing.model_dump(mode='json'))}"


def prepare(spec: SweepSpec, name: str, preprocessing=None, progress: bool = True):
    """The `PreparedDataset` of `datasets.<name>` under `preprocessing` (default: the setting of the
    sweep's first point), synthetic data generated first when asked for."""
    from preprocessing import prepare_dataset

    ds = spec.datasets[name]
    if preprocessing is None:
        preprocessing = spec.trials(name)[0].preprocessing
    ensure_synthetic(spec, name, progress=progress)
    root = dataset_root(spec, name)
    if not root.exists():
        raise ConfigError(f"{spec.source}: datasets.{name}.root: {root} does not exist; point it at the "
                          f"{ds.reader} folder (see docs/datasets.md)")
    sheet = expand_env(ds.sheet, f"{spec.source}: datasets.{name}.sheet") if ds.sheet else None
    cache = spec.workdir_path() / "cache"
    cfg = expand_paths(preprocessing, f"{spec.source}: preprocessing")
    return prepare_dataset(ds.reader, root, cfg, cache, sheet=sheet, on_error=ds.on_error,
                           progress=progress)


def expand_paths(cfg, where: str):
    """`${VAR}` in the preprocessing paths (magnification weights, dlib predictor) expanded.

    The resolved config keeps the unexpanded text (its hash does not depend on where a machine keeps
    the file); the prepared-data key, which hashes the content, sees the real path.
    """
    mag = cfg.magnification
    update = {}
    if mag.weights:
        update["magnification"] = mag.model_copy(
            update={"weights": expand_env(mag.weights, f"{where}.magnification.weights")})
    if cfg.predictor:
        update["predictor"] = expand_env(cfg.predictor, f"{where}.predictor")
    return cfg.model_copy(update=update) if update else cfg


def prepare_all(spec: SweepSpec, progress: bool = True) -> Dict[str, object]:
    """Every prepared dataset the sweep's trials read, keyed by `data_id`."""
    out: Dict[str, object] = {}
    for trial in spec.trials():
        key = data_id(trial)
        if key not in out:
            out[key] = prepare(spec, trial.dataset, trial.preprocessing, progress=progress)
    return out


# -- what `report` needs of the data when the data is not at hand -------------------------------------
MANIFEST = "datasets.json"  # in <workdir>: data id -> prepared-data key and subjects


def record_prepared(spec: SweepSpec, datasets: Dict[str, object]) -> None:
    """Remember each prepared dataset's key and subjects beside the results store, so that `report`
    can rebuild tables where the datasets are not mounted (or their variables not set)."""
    from preprocessing.atomic import atomic_file

    path = spec.workdir_path() / MANIFEST
    known = json.loads(path.read_text()) if path.is_file() else {}
    known.update({i: {"key": d.key, "subjects": sorted(set(map(str, d.subjects)))} for i, d in datasets.items()})
    with atomic_file(path, "w") as f:
        json.dump(known, f, indent=1, sort_keys=True)


def prepared_or_recorded(spec: SweepSpec, warn=print) -> Dict[str, object]:
    """`prepare_all`, or, when a dataset cannot be read here, what the last run recorded of it (its key
    and subjects: enough to find its folds in the results store)."""
    from preprocessing import DatasetError

    try:
        return prepare_all(spec, progress=False)
    except (ConfigError, DatasetError) as e:
        path = spec.workdir_path() / MANIFEST
        known = json.loads(path.read_text()) if path.is_file() else {}
        ids = {data_id(t) for t in spec.trials()}
        if not ids <= set(known):
            raise
        warn(f"note: {str(e).splitlines()[0]}\n      reporting from the results store with the dataset "
             f"keys recorded by the last run ({path})")
        return {i: SimpleNamespace(**known[i]) for i in ids}
