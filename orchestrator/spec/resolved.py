"""The resolved sweep: a sweep file (plus `--set` overrides) loaded once into one frozen object.

`load_sweep(path, overrides)` reads and validates the file (`schema.read_sweep_file`), expands it into its
trials (one `TrialConfig` per (dataset, point, seed)), and expands every `${VAR}` of a path once: the
workdir and each of its subfolders, the tracking URI, each dataset's root and sheet. Everything after
it reads this object; nothing expands the sweep or an environment variable again.

A path that cannot be expanded (`${CASME2_ROOT}` unset) is kept as its error, raised where the path is
used: `plan` and `report` still work where a dataset is not mounted, and `run` stops naming the
variable. The config hashes are computed from the unexpanded text (`TrialConfig.hash`), so where a
machine keeps its data never changes which folds are stored.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Union

from orchestrator.errors import ConfigError
from orchestrator.spec.schema import (
    CrossDatasetSpec,
    DatasetSpec,
    LeaveOneDatasetOutSpec,
    Point,
    ResourcesSpec,
    SweepSpec,
    TrialConfig,
    expand_env,
    read_sweep_file,
)


@dataclass(frozen=True)
class SweepPaths:
    """Every path under a sweep's workdir (docs: "Where results go"), spelled here once."""
    workdir: Path
    cache: Path  # prepared datasets and frozen-prefix features (content-addressed)
    results: Path  # one record per finished fold (the results store)
    reports: Path  # <sweep>.csv / .json and the figures folder
    logs: Path  # tune.log, ray.log
    ray: Path  # the embedded Ray's session files
    ray_results: Path  # Ray Tune's storage path (the experiment folder is <ray_results>/<sweep name>)
    models: Path  # models of `train`
    manifest: Path  # datasets.json: what each prepared dataset was, for `report` without the data
    names: Path  # sweeps.json: which sweep file owns each name here
    lock: Path  # run.lock
    mlflow_db: Path  # the default MLflow store
    mlartifacts: Path  # its artifacts
    search: Path  # the candidates of each search sweep (<sweep name>.json; orchestrator/planning/candidates.py)

    @classmethod
    def under(cls, workdir: Path) -> SweepPaths:
        return cls(workdir=workdir, cache=workdir / "cache", results=workdir / "results",
                   reports=workdir / "reports", logs=workdir / "logs", ray=workdir / "ray",
                   ray_results=workdir / "ray_results", models=workdir / "models",
                   manifest=workdir / "datasets.json", names=workdir / "sweeps.json", lock=workdir / "run.lock",
                   mlflow_db=workdir / "mlflow.db", mlartifacts=workdir / "mlartifacts",
                   search=workdir / "search")


# A path as resolved: the path, or the message of the ConfigError to raise where it is used
_Expanded = Union[Path, "_Unset"]


@dataclass(frozen=True)
class _Unset:
    message: str

    def raise_(self):
        raise ConfigError(self.message)


def _expand_path(text: str, where: str) -> _Expanded:
    try:
        return Path(expand_env(text, where)).expanduser()
    except ConfigError as e:
        return _Unset(str(e))


@dataclass(frozen=True)
class ResolvedDataset:
    """A dataset of the sweep file (`datasets.<name>`) with its paths expanded."""
    name: str
    spec: DatasetSpec
    where: str  # "<file>: datasets.<name>", for messages
    _root: _Expanded
    _sheet: _Expanded | None

    @property
    def root(self) -> Path:
        """The dataset's folder; a ConfigError naming the variable when `${VAR}` in it is unset."""
        return self._root.raise_() if isinstance(self._root, _Unset) else self._root

    @property
    def sheet(self) -> Path | None:
        """The coding sheet when the file names one (`sheet:`), else None (the reader finds it)."""
        if self._sheet is None:
            return None
        return self._sheet.raise_() if isinstance(self._sheet, _Unset) else self._sheet

    @property
    def reader(self) -> str:
        return self.spec.reader

    @property
    def subjects(self) -> list[str] | None:
        return self.spec.subjects


@dataclass(frozen=True)
class Sweep:
    """One loaded sweep file: the validated file (`spec`, what the hashes read), its trials, and every
    path and name a command uses, expanded once."""
    spec: SweepSpec
    paths: SweepPaths
    trials: tuple[TrialConfig, ...]
    points: tuple[Point, ...]
    datasets: Mapping[str, ResolvedDataset]
    experiment: str  # the MLflow experiment
    _tracking_uri: str | _Unset = field(repr=False)
    # what the file says, as it says it
    name: str = ""
    source: str | None = None  # the file it was read from (for messages)
    seeds: tuple[int, ...] = ()
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    retries: int = 0
    max_concurrent: int | None = None
    dashboard: bool = False
    cross_dataset: CrossDatasetSpec | None = None
    leave_one_dataset_out: LeaveOneDatasetOutSpec | None = None

    @property
    def across(self) -> bool:
        """The sweep runs a protocol across datasets (cross-dataset or leave-one-dataset-out), not LOSO."""
        return self.cross_dataset is not None or self.leave_one_dataset_out is not None

    @property
    def protocol_key(self) -> str | None:
        """The sweep file's key of its protocol across datasets, for messages; None under LOSO."""
        return ("cross_dataset" if self.cross_dataset else "leave_one_dataset_out" if self.leave_one_dataset_out
                else None)

    def members(self, name: str) -> list[str]:
        """The datasets behind a name a trial reads (`trial.reads`): a unit's training datasets are one
        '+'-joined name (`casme2+samm`), every other name is one dataset."""
        return name.split("+") if name not in self.datasets else [name]

    @property
    def tracking_uri(self) -> str:
        """`--tracking-uri`, else `tracking.uri` of the file, else the workdir's SQLite store; a ConfigError
        naming the variable when `${VAR}` in it is unset."""
        return self._tracking_uri.raise_() if isinstance(self._tracking_uri, _Unset) else self._tracking_uri

    # -- its trials -----------------------------------------------------------------------------------
    def trials_of(self, dataset: str) -> list[TrialConfig]:
        """The trials of one dataset (a sweep across datasets: of one unit, `train->test`)."""
        names = list(dict.fromkeys(t.dataset for t in self.trials)) if self.across else list(self.datasets)
        if dataset not in names:
            what = ("cross-dataset pair" if self.cross_dataset else "leave-one-dataset-out unit"
                    if self.leave_one_dataset_out else "dataset")
            raise ConfigError(f"{self.source}: no {what} {dataset!r}; the file has {sorted(names)}")
        return [t for t in self.trials if t.dataset == dataset]

    def trial(self, dataset: str, point: int, seed: int) -> TrialConfig:
        """The resolved config of one (dataset, point index, seed)."""
        for t in self.trials_of(dataset):
            if t.point == point and t.seed == seed:
                return t
        raise ConfigError(f"{self.source}: no point {point} with seed {seed} (points 0..{len(self.points) - 1}, "
                          f"seeds {list(self.seeds)})")

    def with_tracking_uri(self, uri: str | None) -> Sweep:
        """The same sweep tracked at `uri` (the command line's `--tracking-uri`); unchanged for None."""
        return self if not uri else replace(self, _tracking_uri=uri)


def resolve(spec: SweepSpec, tracking_uri: str | None = None) -> Sweep:
    """The resolved sweep of a validated file: its trials expanded (every point validated now, not when its
    trial starts) and its paths expanded once."""
    src = spec.source
    workdir = _expand_path(spec.workdir, f"{src}: workdir")
    if isinstance(workdir, _Unset):
        workdir.raise_()
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"{src}: workdir: {workdir} is a file, not a folder; point workdir at a folder (it is "
                          f"created when missing)")
    paths = SweepPaths.under(workdir)
    datasets = {name: ResolvedDataset(name=name, spec=ds, where=f"{src}: datasets.{name}",
                                      _root=_expand_path(ds.root, f"{src}: datasets.{name}.root"),
                                      _sheet=_expand_path(ds.sheet, f"{src}: datasets.{name}.sheet") if ds.sheet
                                      else None)
                for name, ds in spec.datasets.items()}
    if tracking_uri:
        uri: str | _Unset = tracking_uri
    elif spec.tracking.uri:
        try:
            uri = expand_env(spec.tracking.uri, f"{src}: tracking.uri")
        except ConfigError as e:
            uri = _Unset(str(e))
    else:
        uri = f"sqlite:///{paths.mlflow_db.resolve()}"
    points = tuple(spec.points())  # the paper numbers of each point are parsed here, once
    return Sweep(spec=spec, paths=paths, trials=tuple(spec.expand(points)), points=points,
                 datasets=MappingProxyType(datasets), experiment=spec.tracking.experiment or spec.name,
                 _tracking_uri=uri, name=spec.name, source=spec.source, seeds=tuple(spec.seeds),
                 resources=spec.resources, retries=spec.retries, max_concurrent=spec.max_concurrent,
                 dashboard=spec.dashboard,
                 cross_dataset=spec.cross_dataset, leave_one_dataset_out=spec.leave_one_dataset_out)


def load_sweep(path: str | os.PathLike[str], overrides: Sequence[str] = (),
               tracking_uri: str | None = None) -> Sweep:
    """Read, validate and resolve a sweep file with `--set KEY=VALUE` overrides applied first (the
    effective config is what is validated, hashed and stored); every error names the file and the key."""
    return resolve(read_sweep_file(path, overrides), tracking_uri=tracking_uri)
