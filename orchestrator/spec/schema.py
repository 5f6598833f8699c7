"""Sweep YAML schema and its expansion into resolved, hashable trial configs.

A sweep file names datasets, the base preprocessing/model/training sections, a grid over any dotted key,
named variants (several keys changed together), seeds, resources and tracking. It expands into one
`TrialConfig` per (dataset, point, seed); a Ray trial is a `TrialConfig` plus a test subject. With a
`cross_dataset:` section it expands into one `TrialConfig` per (pair, point, seed) instead, each one
unit of work (train on one dataset, test on the other); with a `leave_one_dataset_out:` section, one per
(held-out dataset, point, seed), each unit trained on all the other datasets together.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model.config import ModelConfig, TrainConfig, check_aus, with_dataset_defaults
from orchestrator.errors import ConfigError
from orchestrator.spec import paper
from orchestrator.spec.search import SearchSpec
from preprocessing.config import PreprocessConfig

SECTIONS = ("preprocessing", "model", "training")
_SECTION_MODELS = {"preprocessing": PreprocessConfig, "model": ModelConfig, "training": TrainConfig}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def expand_env(value: str, where: str) -> str:
    """Expand `${VAR}` and `${VAR:-default}`; an unset variable without default is a ConfigError."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set; "
                          f"export {name}=/path/to/the/folder and run again")

    return _ENV.sub(sub, value)


class SynthSpec(_Strict):
    """Generate a synthetic dataset at `root` on first use (quick start, tests)."""
    subjects: int = Field(4, ge=2)
    per_subject: int = Field(6, ge=1)
    seed: int = 0
    intensity: float = Field(1.0, gt=0)
    noise: float = Field(1.0, ge=0)


class DatasetSpec(_Strict):
    reader: Literal["casme2", "samm", "casme3"]
    root: str  # `${ENV}` expanded when the dataset is prepared
    sheet: str | None = None  # coding sheet, when `root` is the frames folder itself
    aus: list[int] | None = None  # None: the paper's AUs for the reader
    subjects: list[str] | None = None  # test subjects to run (folds); None: every subject
    overrides: dict[str, Any] = Field(default_factory=dict)  # dotted keys for this dataset only
    synthetic: SynthSpec | None = None
    on_error: Literal["stop", "skip"] = "stop"
    # Fixes of coding-sheet rows without editing the licensed sheet: {sample id: {onset?, apex?, offset?,
    # aus?}}, e.g. {'006/006_1_2': {aus: '14'}}. A plain dict for the data layer (preprocessing.corrections
    # checks it here and applies it); part of the prepared-data key.
    corrections: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("subjects", mode="before")
    @classmethod
    def _subjects_as_str(cls, v):
        return None if v is None else [str(s) for s in v]

    @field_validator("corrections", mode="before")
    @classmethod
    def _corrections(cls, v):
        from preprocessing.corrections import normalise
        return normalise(v)  # a DatasetError is a ValueError: reported with the key

    @field_validator("aus")
    @classmethod
    def _aus_distinct(cls, v):
        return _check_au_list(v, "the paper's AUs")

    def au_list(self) -> list[int]:
        """The AUs this dataset evaluates: its `aus`, else the paper's for its reader."""
        from preprocessing.annotations import DEFAULT_AUS  # dataset knowledge lives in preprocessing

        return list(self.aus) if self.aus else list(DEFAULT_AUS[self.reader])


def _check_au_list(v: list[int] | None, default: str) -> list[int] | None:
    if v is not None:
        if not v:
            raise ValueError(f"give at least one AU, or remove the key for {default}")
        if len(set(v)) != len(v) or any(a < 1 for a in v):
            raise ValueError(f"AU numbers must be positive and listed once, got {v}")
    return v


class CrossPair(_Strict):
    train: str  # names in `datasets`
    test: str

    @property
    def label(self) -> str:
        return f"{self.train}->{self.test}"


class CrossDatasetSpec(_Strict):
    """The cross-dataset protocol (docs/protocol.md): per pair, train on every sample of `train` and test
    on every sample of `test`, on AUs both datasets evaluate."""
    pairs: list[CrossPair] = Field(min_length=1)
    aus: list[int] | None = None  # None: the AUs of both datasets' lists (e.g. CASME II, SAMM: 2, 4, 7, 12)

    @field_validator("aus")
    @classmethod
    def _aus_distinct(cls, v):
        return _check_au_list(v, "the AUs both datasets evaluate")


class LeaveOneDatasetOutSpec(_Strict):
    """Leave-one-dataset-out (docs/protocol.md): per held-out dataset, train on every sample of all the
    other datasets of the protocol together and test on every sample of the held-out one, on AUs every
    dataset of the protocol evaluates."""
    datasets: list[str] | None = None  # the datasets of the protocol, in training order; None: every one
    test: list[str] | None = None  # the datasets held out, one unit each; None: each of `datasets`
    aus: list[int] | None = None  # None: the AUs all the datasets' lists share

    @field_validator("aus")
    @classmethod
    def _aus_distinct(cls, v):
        return _check_au_list(v, "the AUs all the datasets evaluate")


class ResourcesSpec(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)
    # K folds of one point (and seed) per trial, trained as one stacked model (model.train_folds); each
    # fold stored as if trained alone. How the work is packed, not what it computes: out of the hash
    folds_per_trial: int = Field(1, ge=1)


class TrackingSpec(_Strict):
    uri: str | None = None  # None: sqlite:///<workdir>/mlflow.db
    experiment: str | None = None  # None: the sweep's name


class SweepSpec(_Strict):
    name: str  # names the report files and the MLflow experiment
    workdir: str = ".microau"  # cache, results store, reports and the default MLflow store
    datasets: dict[str, DatasetSpec]
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1)
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()
    retries: int = Field(2, ge=0)  # Ray Tune max_failures per trial
    max_concurrent: int | None = Field(None, ge=1)
    dashboard: bool = False  # serve the Ray dashboard of an embedded Ray (as `run --dashboard`)
    # Present: the cross-dataset protocol (one unit per pair, point and seed) instead of LOSO
    cross_dataset: CrossDatasetSpec | None = None
    # Present: leave-one-dataset-out (one unit per held-out dataset, point and seed) instead of LOSO
    leave_one_dataset_out: LeaveOneDatasetOutSpec | None = None
    # Present: a search over whole LOSO points (orchestrator/spec/search.py) instead of grid/variants
    search: SearchSpec | None = None
    source: str | None = Field(None, exclude=True)  # the file it was read from (for messages)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v):
        if not _NAME.match(v):
            raise ValueError("use letters, digits, '.', '_' and '-' only, starting with a letter or digit "
                             "(it names the report files in <workdir>/reports and the MLflow experiment)")
        return v

    @field_validator("datasets")
    @classmethod
    def _some_dataset(cls, v):
        if not v:
            raise ValueError("name at least one dataset, e.g. casme2: {reader: casme2, root: ${CASME2_ROOT}}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds_distinct(cls, v):
        twice = sorted({s for s in v if v.count(s) > 1})
        if twice:
            raise ValueError(f"seed(s) {twice} listed more than once; list each seed once")
        return v

    @model_validator(mode="after")
    def _one_protocol(self):
        if self.cross_dataset is not None and self.leave_one_dataset_out is not None:
            raise ValueError("cross_dataset and leave_one_dataset_out are two protocols; keep one of them (a "
                             "sweep file runs one protocol)")
        return self

    def check_search(self) -> None:
        """A `search:` section fits the rest of the file, and every value its space can sample makes a valid
        config (as a grid value would), checked at the edges of each range and for every choice."""
        search, where = self.search, f"{self.source}: search"
        if search is None:
            return
        for key in ("grid", "variants", "cross_dataset", "leave_one_dataset_out"):
            if getattr(self, key):
                raise ConfigError(f"{where}: a search samples its own points over LOSO; remove {key}: (or move "
                                  f"the search to a sweep file of its own)")
        if len(self.seeds) != 1:
            raise ConfigError(f"{where}: a search runs one seed; keep one seed in seeds: (got {self.seeds})")
        if search.dataset is not None and search.dataset not in self.datasets:
            raise ConfigError(f"{where}.dataset: no dataset {search.dataset!r}; the file has {sorted(self.datasets)}")
        names = [search.dataset] if search.dataset else list(self.datasets)
        for key, dim in search.space.items():
            for value in dim.probes():
                point = Point(index=0, variant=None, params={key: value}, grid={key: value})
                for name in names:
                    try:
                        self.resolve(name, point, self.seeds[0])
                    except ConfigError as e:
                        hint = ("; use randint: [low, high] for an integer key" if dim.kind in ("uniform", "loguniform")
                                and "integer" in str(e) else "")
                        raise ConfigError(f"{where}.space.{key}: the value {value!r} does not make a valid "
                                          f"config: {e}{hint}") from None

    def _units(self) -> tuple[list[tuple[list[str], str]], list[int]]:
        """The units of a protocol across datasets, [(datasets trained on, dataset tested on)], and their
        AUs, with the section checked once: the cross-dataset pairs, or one unit per held-out dataset of
        leave_one_dataset_out; ([], []) under LOSO."""
        if self.cross_dataset:
            aus = self.cross_aus()  # checks the pairs
            return [([c.train], c.test) for c in self.cross_dataset.pairs], aus
        if self.leave_one_dataset_out:
            names, held = self._lodo_datasets()
            aus = self._shared_aus(names, self.leave_one_dataset_out.aus,
                                   f"{self.source}: leave_one_dataset_out", "of the protocol")
            return [([n for n in names if n != t], t) for t in held], aus
        return [], []

    def _lodo_datasets(self) -> tuple[list[str], list[str]]:
        """(the datasets of leave_one_dataset_out, in training order; the held-out ones), checked."""
        lodo, where = self.leave_one_dataset_out, f"{self.source}: leave_one_dataset_out"
        names = list(lodo.datasets) if lodo.datasets is not None else list(self.datasets)
        for i, n in enumerate(names):
            if n not in self.datasets:
                raise ConfigError(f"{where}.datasets[{i}]: no dataset {n!r}; the file has {sorted(self.datasets)}")
            if names.count(n) > 1:
                raise ConfigError(f"{where}.datasets: {n!r} is listed twice; list each dataset once")
            if not _NAME.match(n):
                raise ConfigError(f"{where}: dataset name {n!r}: use letters, digits, '.', '_' and '-' only (a "
                                  f"unit's label joins the names it trains on with '+')")
        if len(names) < 2:
            raise ConfigError(f"{where}.datasets: leave-one-dataset-out needs at least two datasets, got "
                              f"{names}; add datasets (or run LOSO: remove leave_one_dataset_out)")
        for n in self.datasets:
            if n not in names:
                raise ConfigError(f"{where}: datasets.{n} is not in the protocol; add it to "
                                  f"leave_one_dataset_out.datasets or remove it")
            if self.datasets[n].subjects is not None:
                raise ConfigError(f"{self.source}: datasets.{n}.subjects: leave-one-dataset-out trains and tests "
                                  f"on every subject of each dataset; remove `subjects`")
        held = list(lodo.test) if lodo.test is not None else names
        for i, t in enumerate(held):
            if t not in names:
                raise ConfigError(f"{where}.test[{i}]: {t!r} is not among the protocol's datasets {names}")
            if held.count(t) > 1:
                raise ConfigError(f"{where}.test: {t!r} is listed twice; list each held-out dataset once")
        if not held:
            raise ConfigError(f"{where}.test: name at least one dataset to hold out, or remove the key for each")
        return names, held

    def points(self) -> list[Point]:
        """Grid points: every variant (or none) crossed with the product of the grid's values. A variant's
        `paper:` key and a grid value written `{value: V, paper: {...}}` give the paper's numbers of the
        point (orchestrator/spec/paper.py); they are not config and never reach a trial's params or hash."""
        ds, src = list(self.datasets), self.source
        variants = [(n, {k: v for k, v in p.items() if k != "paper"},
                     paper.parse(p.get("paper"), f"variants.{n}.paper", ds, src))
                    for n, p in self.variants.items()] or [(None, {}, {})]
        keys = list(self.grid)
        values = [[paper.split_grid_value(v, f"grid.{k}[{i}]", ds, src) for i, v in enumerate(self.grid[k])]
                  for k in keys]
        out = []
        for vname, vparams, vpaper in variants:
            for combo in itertools.product(*values):
                grid = {k: v for k, (v, _) in zip(keys, combo, strict=False)}
                point = Point(index=len(out), variant=vname, params={**vparams, **grid}, grid=grid)
                parts = [(f"variants.{vname}.paper", vpaper)] + [
                    (f"grid.{k} value {v!r}", numbers) for k, (v, numbers) in zip(keys, combo, strict=False)]
                out.append(point.model_copy(update={"paper": paper.merge(parts, point.label, src)}))
        return out

    def expand(self, points: Sequence[Point]) -> list[TrialConfig]:
        """Resolved configs, one per (dataset, point, seed) in sweep order (per (pair, point, seed) under the
        cross-dataset protocol); every point of every dataset is validated here. `load_sweep` calls it once
        and keeps the result in the resolved sweep (orchestrator/spec/resolved.py). `points`: `points()`,
        made once by the caller."""
        units, aus = self._units()
        if units:
            return [self.resolve(train[0], p, s, test=test, aus=aus, also=train[1:]) for train, test in units
                    for p in points for s in self.seeds]
        return [self.resolve(n, p, s) for n in self.datasets for p in points for s in self.seeds]

    def _shared_aus(self, names: Sequence[str], wanted: list[int] | None, where: str, group: str) -> list[int]:
        """`wanted`, each one checked to be in the AU list of every dataset of `names`, else (None) the AUs
        all those lists share, in the first's order; `where`, `group` (`of its pairs`) word the errors."""
        lists = {n: self.datasets[n].au_list() for n in names}
        shared = [a for a in lists[names[0]] if all(a in v for v in lists.values())]
        if wanted is None:
            if not shared:
                each = "; ".join(f"datasets.{n}: {v}" for n, v in lists.items())
                raise ConfigError(f"{where}: the datasets {group} share no AU ({each}); give them common AUs in "
                                  f"their `aus:` lists")
            return shared
        for name, have in lists.items():
            missing = [a for a in wanted if a not in have]
            if missing:
                ds = self.datasets[name]
                src = "its `aus:`" if ds.aus else f"the default AUs of reader {ds.reader}"
                raise ConfigError(f"{where}.aus: AU {', '.join(map(str, missing))} not among the AUs of "
                                  f"datasets.{name} ({have}: {src}); list only AUs every dataset {group} "
                                  f"evaluates (here {shared}), or add them to datasets.{name}.aus")
        return list(wanted)

    def cross_aus(self) -> list[int]:
        """The AUs of the cross-dataset protocol, with its pairs checked: `cross_dataset.aus`, each one in
        the AU list of every dataset of a pair, else the AUs all those lists share (in the first's order)."""
        cross, where = self.cross_dataset, f"{self.source}: cross_dataset"
        seen = set()
        for i, c in enumerate(cross.pairs):
            for role in ("train", "test"):
                name = getattr(c, role)
                if name not in self.datasets:
                    raise ConfigError(f"{where}.pairs[{i}].{role}: no dataset {name!r}; the file has "
                                      f"{sorted(self.datasets)}")
            if c.train == c.test:
                raise ConfigError(f"{where}.pairs[{i}]: trains and tests on {c.train!r}; a cross-dataset pair "
                                  f"names two datasets (the LOSO protocol runs within one: remove cross_dataset)")
            if (c.train, c.test) in seen:
                raise ConfigError(f"{where}.pairs[{i}]: {c.label} is listed twice; list each pair once")
            seen.add((c.train, c.test))
        used = list(dict.fromkeys(n for c in cross.pairs for n in (c.train, c.test)))
        for name in self.datasets:
            if name not in used:
                raise ConfigError(f"{where}: datasets.{name} is in no pair; add a pair with it or remove it")
            if self.datasets[name].subjects is not None:
                raise ConfigError(f"{self.source}: datasets.{name}.subjects: the cross-dataset protocol trains on "
                                  f"every subject of one dataset and tests on every subject of the other; "
                                  f"remove `subjects`")
        return self._shared_aus(used, cross.aus, where, "of its pairs")

    def resolve(self, dataset: str, point: Point, seed: int, test: str | None = None,
                aus: list[int] | None = None, also: Sequence[str] = ()) -> TrialConfig:
        """The config of (dataset, point, seed); with `test`, of the unit that trains on `dataset` and the
        datasets `also` (leave-one-dataset-out) together and tests on `test`, on `aus`. The overrides of
        every dataset trained on apply, in that order; alpha/beta default to the paper's values of the
        dataset(s) trained on, which must then agree."""
        train = [dataset, *also]
        tree = {"preprocessing": copy.deepcopy(self.preprocessing), "model": copy.deepcopy(self.model),
                "training": copy.deepcopy(self.training)}
        steps = [(f"datasets.{n}.overrides", self.datasets[n].overrides) for n in train]
        for where, params in steps + [(f"point {point.label}", point.params)]:
            for key, value in params.items():
                _set_dotted(tree, key, value, f"{self.source}: {where}")
        sections = {}
        for name, cls in _SECTION_MODELS.items():
            try:
                sections[name] = cls.model_validate(tree[name])
            except ValidationError as e:
                raise ConfigError(_format_errors(e, f"{self.source}", prefix=name)) from None
        label = "+".join(train)
        protocol = "cross_dataset" if self.cross_dataset else "leave_one_dataset_out"
        where = f"{protocol} {label}->{test}" if test else f"datasets.{dataset}"
        sections["training"] = self._weights(sections["training"], train, where, point)
        aus = list(aus) if aus else self.datasets[dataset].au_list()
        try:
            check_aus(sections["model"], aus)
        except ValueError as e:
            raise ConfigError(f"{self.source}: {where} (AUs {aus}), point {point.label}: {e}") from None
        cross = {"dataset": f"{label}->{test}", "train": label, "test": test,
                 "test_reader": self.datasets[test].reader} if test else {"dataset": dataset}
        if also:
            cross["train_readers"] = [self.datasets[n].reader for n in train]
        return TrialConfig(**cross, reader=self.datasets[dataset].reader, aus=aus, point=point.index,
                           point_label=point.label, variant=point.variant, params=point.params, seed=seed,
                           **sections)

    def _weights(self, training: TrainConfig, train: Sequence[str], where: str, point: Point) -> TrainConfig:
        """`training` with alpha/beta filled from the paper's defaults of the dataset(s) trained on; a
        ConfigError when one is still unset (no default, or datasets whose defaults differ)."""
        filled = {n: with_dataset_defaults(training, self.datasets[n].reader) for n in train}
        first = filled[train[0]]
        if any(t != first for t in filled.values()):
            each = ", ".join(f"{n} ({self.datasets[n].reader}: alpha {t.alpha}, beta {t.beta})"
                             for n, t in filled.items())
            raise ConfigError(f"{self.source}: {where}, point {point.label}: the datasets trained on have different "
                              f"default alpha/beta ({each}); set training.alpha and training.beta for the unit")
        for k in ("alpha", "beta"):
            if getattr(first, k) is None:
                raise ConfigError(f"{self.source}: {where}, point {point.label}: training.{k} is not set and "
                                  f"reader {self.datasets[train[0]].reader} has no default; set training.{k}")
        return first


class Point(BaseModel):
    index: int
    variant: str | None
    params: dict[str, Any]  # every dotted key the point sets (variant's and grid's)
    grid: dict[str, Any]  # the grid's part alone
    paper: dict[str, dict[str, float]] = {}  # the paper's numbers, {dataset: {metric: value}}; not config

    @property
    def label(self) -> str:
        parts = ([self.variant] if self.variant else []) + [f"{k}={v}" for k, v in self.grid.items()]
        return ",".join(parts) if parts else "base"


class TrialConfig(_Strict):
    """One resolved config per (dataset, point, seed): everything `train_fold` reads. Under the
    cross-dataset protocol, one per (pair, point, seed): `dataset` is the pair's label `train->test`; under
    leave-one-dataset-out, one per (held-out dataset, point, seed): `train` joins the datasets trained on
    with '+' (`casme2+samm->casme3`)."""
    dataset: str
    reader: str  # of the dataset trained on
    aus: list[int]
    point: int
    point_label: str
    variant: str | None
    params: dict[str, Any]
    seed: int
    preprocessing: PreprocessConfig
    model: ModelConfig
    training: TrainConfig
    # cross-dataset and leave-one-dataset-out units only: the dataset(s) (names in `datasets`, several
    # joined by '+') trained on and the one tested on
    train: str | None = None
    test: str | None = None
    test_reader: str | None = None
    # a unit trained on several datasets (leave-one-dataset-out): the reader of each, in `train`'s order
    train_readers: list[str] | None = None

    @property
    def cross(self) -> bool:
        """A unit across datasets (cross-dataset or leave-one-dataset-out): trains on every sample of its
        training data, tests on every sample of another dataset."""
        return self.test is not None

    @property
    def protocol(self) -> str:
        """`loso`, `cross_dataset` (trained on one other dataset) or `lodo` (on several together)."""
        return "lodo" if self.train_readers else "cross_dataset" if self.cross else "loso"

    @property
    def reads(self) -> list[str]:
        """The data it reads, what it trains on first: dataset names, a unit's training datasets as one
        '+'-joined name (orchestrator.planning.data prepares them as one dataset)."""
        return [self.train, self.test] if self.cross else [self.dataset]

    def scientific(self) -> dict[str, Any]:
        """The part that determines the result (names and labels excluded)."""
        out = {"reader": self.reader, "aus": self.aus, "seed": self.seed,
               "preprocessing": self.preprocessing.model_dump(mode="json"),
               "model": self.model.identity(),
               "training": _training_for_hash(self.training)}
        if self.cross:  # LOSO configs hash as before, so their stored folds stay valid
            out.update(protocol="cross_dataset", test_reader=self.test_reader)
        if self.train_readers:  # a unit on one training dataset is the cross-dataset unit, key and all
            out.update(protocol="lodo", train_readers=list(self.train_readers))
        return out

    @property
    def hash(self) -> str:
        return stable_hash(self.scientific())

    def flat_params(self) -> dict[str, Any]:
        """`section.key` -> value, for MLflow params."""
        out = {"dataset": self.dataset, "reader": self.reader, "aus": ",".join(map(str, self.aus)),
               "seed": self.seed, "point": self.point_label}
        if self.cross:
            out.update(protocol=self.protocol, train=self.train, test=self.test, test_reader=self.test_reader)
        if self.train_readers:
            out["train_readers"] = ",".join(self.train_readers)
        for section in SECTIONS:
            out.update(_flatten(getattr(self, section).model_dump(mode="json"), section))
        return out

    def with_training(self, **update) -> TrialConfig:
        return self.model_copy(update={"training": self.training.model_copy(update=update)})


def _training_for_hash(train: TrainConfig) -> dict[str, Any]:
    # Where it runs and with how many threads does not change what it computes. `precision: auto` follows
    # the device as `device: auto` does (bf16 on CUDA, fp32 elsewhere, within the tolerance docs/model.md
    # states), so it is left out too, and folds stored before the field existed keep their key; a
    # precision set explicitly is part of the hash. `compile` (torch.compile of the step) is how the step
    # runs, not what it computes: left out whatever its value.
    d = train.model_dump(mode="json")
    return {k: v for k, v in d.items()
            if k not in ("device", "threads", "compile") and not (k == "precision" and v == "auto")}


def stable_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flatten(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(_flatten(v, key))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)
    return out


def _set_dotted(tree: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    if parts[0] not in SECTIONS or len(parts) < 2:
        raise ConfigError(f"{where}: key {key!r} must start with one of {', '.join(SECTIONS)} "
                          f"(for example training.beta)")
    cls: Any = _SECTION_MODELS[parts[0]]
    node = tree[parts[0]]
    for i, p in enumerate(parts[1:], start=1):
        fields = getattr(cls, "model_fields", None)
        if fields is not None and p not in fields:
            raise ConfigError(f"{where}: unknown key {key!r} ({'.'.join(parts[:i])} has "
                              f"{', '.join(sorted(fields))})")
        if i == len(parts) - 1:
            node[p] = value
        else:
            ann = fields[p].annotation if fields is not None else None
            cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key!r}: {'.'.join(parts[:i + 1])} is not a section")


def _format_errors(e: ValidationError, source: str, prefix: str = "") -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {loc!r}")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing key {loc!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {loc}: {msg} (got {err.get('input')!r})")
    return "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], source: str) -> dict[str, Any]:
    """`KEY=VALUE` items (the command line's `--set`) applied to a sweep file's mapping: KEY is dotted
    (`training.epochs`, `datasets.casme2.root`, `seeds`), VALUE is read as YAML (`2`, `[1, 2]`,
    `false`, `{cpu: 1}`). Section keys are checked against their schema here, so a typo is named with
    the `--set` it came from; the rest is validated with the whole file."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        where = f"{source}: --set {item}"
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"{where}: write --set KEY=VALUE with a dotted KEY, e.g. --set training.epochs=2")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: the value is not valid YAML ({e})") from None
        parts = key.split(".")
        if parts[0] in SECTIONS:
            if len(parts) > 1:  # a schema check of the path; the value is validated with the config
                _set_dotted({s: {} for s in SECTIONS}, key, value, where)
        elif parts[0] not in SweepSpec.model_fields or parts[0] == "source":
            raise ConfigError(f"{where}: unknown key {parts[0]!r} (a sweep file has "
                              f"{', '.join(k for k in SweepSpec.model_fields if k != 'source')})")
        node = raw
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {'.'.join(parts[:i + 1])} is not a mapping in the file")
        node[parts[-1]] = value
    return raw


def read_sweep_file(path: str | os.PathLike, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read and validate a sweep file, with `--set KEY=VALUE` overrides applied first (the effective
    config is what is validated, hashed and stored); every error names the file and the key. Its trials
    are expanded (and so validated) by `orchestrator.spec.resolved.load_sweep`, the one way in."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with at least 'name' and 'datasets'")
    raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, overrides, str(path))
    try:
        spec = SweepSpec.model_validate({**raw, "source": str(path)})
    except ValidationError as e:
        raise ConfigError(_format_errors(e, str(path))) from None
    for k in spec.grid:
        if not spec.grid[k]:
            raise ConfigError(f"{path}: grid.{k} has no values")
    spec.check_search()
    return spec
