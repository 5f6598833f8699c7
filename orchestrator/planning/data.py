"""Prepare a sweep's datasets: expand roots, generate synthetic data on first use, use the cache.

Every prepared dataset of a sweep is cached under `<workdir>/cache` by the preprocessing layer's content
hash, so a second run (or another sweep over the same data and preprocessing) reads one .npz.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

from orchestrator.errors import ConfigError
from orchestrator.spec.resolved import Sweep
from orchestrator.spec.schema import TrialConfig, expand_env, stable_hash
from preprocessing import find_prepared, prepare_dataset, prepared_key, synth
from preprocessing.atomic import atomic_file
from preprocessing.dataset import PreparedDataset
from preprocessing.errors import MicroAUError

logger = logging.getLogger(__name__)


def ensure_synthetic(sweep: Sweep, name: str, progress: bool = True) -> Path | None:
    """Generate the synthetic dataset of `datasets.<name>.synthetic` when its root is missing or empty.

    Returns the root when it generated something, else None.
    """
    ds = sweep.datasets[name]
    root = ds.root
    if ds.spec.synthetic is None:
        return None
    if root.is_dir() and any(root.iterdir()):
        return None
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{ds.where}.root {root} is a file, not a folder")
    s = ds.spec.synthetic
    if progress:
        logger.info(f"[{name}] generating a synthetic {ds.reader} dataset in {root} "
                    f"({s.subjects} subjects x {s.per_subject} samples, seed {s.seed})")
    synth.generate(root, ds.reader, s.subjects, s.per_subject, s.seed, intensity=s.intensity, noise=s.noise)
    return root


def data_id(trial: TrialConfig, dataset: str | None = None) -> str:
    """Which prepared dataset a trial reads: its dataset (the one it trains on; or `dataset`, another it
    reads) under its preprocessing config. A grid or a variant may vary `preprocessing.*`; each distinct
    setting is prepared (and cached) once."""
    return f"{dataset or trial.reads[0]}@{stable_hash(trial.preprocessing.model_dump(mode='json'))}"


def data_ids(trial: TrialConfig) -> list[str]:
    """Every prepared dataset a trial reads, in `trial.reads` order (cross-dataset: train, test)."""
    return [data_id(trial, name) for name in trial.reads]


def prepare(sweep: Sweep, name: str, preprocessing, progress: bool = True, cached_only: bool = False,
            map_samples=None):
    """The `PreparedDataset` of `datasets.<name>` under `preprocessing` (a trial's), synthetic data
    generated first when asked for. `map_samples`: how its samples are prepared (orchestrator.execution.parallel
    .RaySamples: as Ray tasks; default in this process).

    cached_only: only what the cache holds (None when the dataset is not prepared): no synthetic data is
    generated and nothing is preprocessed; "key": only the prepared-data key the data has now.

    A unit's training datasets (leave-one-dataset-out), one '+'-joined name, are prepared each on its own
    (and cached so) and combined in memory (PreparedDataset.combine); their key is a hash of theirs."""
    members = sweep.members(name)
    if len(members) > 1:
        parts = [(n, prepare(sweep, n, preprocessing, progress, cached_only, map_samples)) for n in members]
        if cached_only == "key":
            return PreparedDataset.combined_key(parts)
        if any(d is None for _, d in parts):
            return None
        return PreparedDataset.combine(parts)
    ds = sweep.datasets[name]
    if not cached_only:
        ensure_synthetic(sweep, name, progress=progress)
    problem = unreachable(sweep, name, generates=not cached_only)
    if problem:
        raise ConfigError(problem)
    root, sheet = ds.root, ds.sheet
    cache = sweep.paths.cache
    cfg = expand_paths(preprocessing, f"{sweep.source}: preprocessing")
    fixes = {"corrections": dict(ds.spec.corrections),
             "corrections_where": f"datasets.{name}.corrections (in {sweep.source})"}
    on_error = ds.spec.on_error
    if cached_only == "key":
        return prepared_key(ds.reader, root, cfg, cache, sheet=sheet, **fixes)
    if cached_only:
        return find_prepared(ds.reader, root, cfg, cache, sheet=sheet, on_error=on_error, **fixes)
    return prepare_dataset(ds.reader, root, cfg, cache, sheet=sheet, on_error=on_error,
                           progress=progress, map_samples=map_samples, **fixes)


def unreachable(sweep: Sweep, name: str, generates: bool = True) -> str | None:
    """Why `prepare` cannot read `datasets.<name>` (every dataset behind a '+'-joined name): a `${VAR}` of
    its root or sheet unset, or a root that does not exist (and is not generated on first use, when
    `generates`); None when it can. `run` stops with this message; `plan` shows it."""
    for n in sweep.members(name):
        ds = sweep.datasets[n]
        try:
            root, _ = ds.root, ds.sheet
        except ConfigError as e:
            return str(e)
        if not root.exists() and not (generates and ds.spec.synthetic is not None):
            return (f"{ds.where}.root: {root} does not exist; point it at the {ds.reader} folder (see "
                    f"docs/datasets.md)")
    return None


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


def prepare_all(sweep: Sweep, trials: Sequence[TrialConfig], progress: bool = True,
                cached_only: bool = False, map_samples=None) -> dict[str, object]:
    """Every prepared dataset the `trials` (the sweep's expansion) read, keyed by `data_id` (cached_only,
    map_samples: see `prepare`; a dataset not prepared yet maps to None)."""
    out: dict[str, object] = {}
    for trial in trials:
        for name, key in zip(trial.reads, data_ids(trial), strict=False):
            if key not in out:
                out[key] = prepare(sweep, name, trial.preprocessing, progress=progress, cached_only=cached_only,
                                   map_samples=map_samples)
    return out


# -- what `report` needs of the data when the data is not at hand -------------------------------------


def _read_manifest(path: Path) -> dict[str, dict]:
    """The manifest, or {} when there is none; a damaged one is moved aside (`.damaged`) with a warning:
    it only remembers keys, which the next run records again."""
    if not path.is_file():
        return {}
    try:
        known = json.loads(path.read_text())
        if isinstance(known, dict) and all(isinstance(v, dict) and isinstance(v.get("key"), str)
                                           and isinstance(v.get("subjects"), list) for v in known.values()):
            return known
        why = "not a map of data ids to {key, subjects}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        why = str(e)
    aside = path.with_name(path.name + ".damaged")
    os.replace(path, aside)
    logger.warning(f"warning: {path} is damaged ({why}); moved to {aside}. It is written again from the "
                   f"prepared datasets; `report` cannot use it where the datasets are not at hand until then.")
    return {}


NOTES = ("skipped", "dropped_subjects", "apex_estimated", "corrected", "warnings")  # listed in every report


def dataset_info(d) -> dict[str, object]:
    """What the sweep keeps of a prepared dataset: key, subjects, and the notes every report lists:
    skipped samples, subjects left with no sample (dropped from LOSO), samples whose apex was estimated,
    samples corrected by `corrections:`, and warnings (e.g. an offset past the last frame)."""
    subjects = sorted(set(map(str, d.subjects)))
    skipped = [dict(s) for s in (getattr(d, "skipped", None) or [])]
    lost = {str(s["sample"]).split("/")[0] for s in skipped} - set(subjects)
    samples = len(d.sample_ids) if getattr(d, "sample_ids", None) is not None else getattr(d, "samples", None)
    return {"key": d.key, "subjects": subjects, "samples": samples, "skipped": skipped,
            "dropped_subjects": sorted(lost),
            **{k: [dict(x) for x in (getattr(d, k, None) or [])] for k in ("apex_estimated", "corrected",
                                                                           "warnings")}}


def record_prepared(sweep: Sweep, datasets: dict[str, object]) -> None:
    """Remember each prepared dataset's key, subjects and skipped samples beside the results store, so
    that `report` can rebuild tables where the datasets are not mounted (or their variables not set)."""
    path = sweep.paths.manifest
    known = _read_manifest(path)
    for i, d in datasets.items():
        old = known.get(i) or {}
        earlier = [k for k in [old.get("key")] + list(old.get("earlier_keys") or []) if k and k != d.key]
        known[i] = {**dataset_info(d), "earlier_keys": list(dict.fromkeys(earlier))[:20]}
    with atomic_file(path, "w") as f:
        json.dump(known, f, indent=1, sort_keys=True)


def prepared_or_recorded(sweep: Sweep, trials: Sequence[TrialConfig],
                         strict: bool = True) -> dict[str, SimpleNamespace | None]:
    """What `report` and `plan` need of each dataset the `trials` read (key, subjects, notes), without
    preprocessing: the cached prepared dataset, else what the last run recorded of it. Each value's
    `origin` says which ("prepared" or "recorded"). A dataset that is neither is a ConfigError, or maps
    to None when not `strict` (`plan`: it will be prepared first)."""
    path = sweep.paths.manifest
    try:
        found = prepare_all(sweep, trials, progress=False, cached_only=True)
        missing = sorted(i for i, d in found.items() if d is None)
        reason = f"{sweep.source}: {', '.join(missing)} not prepared here yet" if missing else None
    except MicroAUError as e:
        found, reason = {}, str(e).splitlines()[0]
    out = {i: SimpleNamespace(**dataset_info(d), origin="prepared") for i, d in found.items() if d is not None}
    if reason is None:
        return out
    known = _read_manifest(path)
    need = {i for t in trials for i in data_ids(t)} - set(out)
    absent = sorted(need - set(known))
    if absent and strict:
        raise ConfigError(f"{reason}\nNo earlier run recorded {', '.join(absent)} in {path} either: run "
                          f"`microau-sweep run {sweep.source}` first (report never preprocesses)")
    if need - set(absent):
        logger.warning(f"note: {reason}\n      using the dataset keys recorded by the last run ({path})")
    out.update({i: SimpleNamespace(**{**{k: [] for k in NOTES}, **known[i]}, origin="recorded")
                for i in need if i in known})
    out.update({i: None for i in absent})
    by_id = {i: (name, t) for t in trials for name, i in zip(t.reads, data_ids(t), strict=False)}
    for i in sorted(need - set(absent)):
        if found.get(i, "unknown") is not None:
            continue  # the data is not at hand here: the recorded key is all there is
        name, t = by_id[i]
        try:
            now = prepare(sweep, name, t.preprocessing, progress=False, cached_only="key")
        except MicroAUError:
            continue
        if now != out[i].key:
            out[i].current_key = now
            logger.warning(f"note: the data of {i} here has the prepared-data key {now}, not the recorded "
                           f"{out[i].key}: "
                           f"its coding sheet, frames, corrections or preprocessing model files differ from what the "
                           f"last run prepared (or this version keys them differently). The table shows the folds of "
                           f"the recorded key; `run` prepares the data as it is now and trains every fold of it.")
    return out


def earlier_keys(sweep: Sweep) -> dict[str, list[str]]:
    """data id -> prepared-data keys this workdir recorded for it before the current one (newest first):
    the folds stored under them were made from other data or preprocessing inputs."""
    known = _read_manifest(sweep.paths.manifest)
    return {i: list(v.get("earlier_keys") or []) for i, v in known.items()}
