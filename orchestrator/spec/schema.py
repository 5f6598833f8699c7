"""Sweep YAML schema and its expansion into resolved, hashable trial configs.

A sweep file names datasets, the base preprocessing/model/training sections, a grid over any dotted key,
named variants (several keys changed together), seeds, resources and tracking. It expands into one
`TrialConfig` per (dataset, point, seed); a Ray trial is a `TrialConfig` plus a test subject. With a
`cross_dataset:` section it expands into one `TrialConfig` per (pair, point, seed) instead, each one
unit of work (train on one dataset, test on the other).
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model.config import ModelConfig, TrainConfig, check_aus, with_dataset_defaults
from orchestrator.errors import ConfigError
from orchestrator.spec import paper
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
    reader: Literal["casme2", "samm"]
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


class ResourcesSpec(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


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
    # Present: the cross-dataset protocol (one unit per pair, point and seed) instead of LOSO
    cross_dataset: CrossDatasetSpec | None = None
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
        if self.cross_dataset:
            aus = self.cross_aus()
            return [self.resolve(c.train, p, s, test=c.test, aus=aus) for c in self.cross_dataset.pairs
                    for p in points for s in self.seeds]
        return [self.resolve(n, p, s) for n in self.datasets for p in points for s in self.seeds]

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
        lists = {n: self.datasets[n].au_list() for n in used}
        shared = [a for a in lists[used[0]] if all(a in v for v in lists.values())]
        if cross.aus is None:
            if not shared:
                each = "; ".join(f"datasets.{n}: {v}" for n, v in lists.items())
                raise ConfigError(f"{where}: the datasets of its pairs share no AU ({each}); give them "
                                  f"common AUs in their `aus:` lists")
            return shared
        for name, have in lists.items():
            missing = [a for a in cross.aus if a not in have]
            if missing:
                ds = self.datasets[name]
                src = "its `aus:`" if ds.aus else f"the paper's AUs for reader {ds.reader}"
                raise ConfigError(f"{where}.aus: AU {', '.join(map(str, missing))} not among the AUs of "
                                  f"datasets.{name} ({have}: {src}); list only AUs every dataset of a pair "
                                  f"evaluates (here {shared}), or add them to datasets.{name}.aus")
        return list(cross.aus)

    def resolve(self, dataset: str, point: Point, seed: int, test: str | None = None,
                aus: list[int] | None = None) -> TrialConfig:
        """The config of (dataset, point, seed); with `test`, of the cross-dataset unit that trains on
        `dataset` (its overrides and its reader's alpha/beta) and tests on `test`, on `aus`."""
        ds = self.datasets[dataset]
        tree = {"preprocessing": copy.deepcopy(self.preprocessing), "model": copy.deepcopy(self.model),
                "training": copy.deepcopy(self.training)}
        for where, params in ((f"datasets.{dataset}.overrides", ds.overrides),
                              (f"point {point.label}", point.params)):
            for key, value in params.items():
                _set_dotted(tree, key, value, f"{self.source}: {where}")
        sections = {}
        for name, cls in _SECTION_MODELS.items():
            try:
                sections[name] = cls.model_validate(tree[name])
            except ValidationError as e:
                raise ConfigError(_format_errors(e, f"{self.source}", prefix=name)) from None
        sections["training"] = with_dataset_defaults(sections["training"], ds.reader)
        aus = list(aus) if aus else ds.au_list()
        where = f"cross_dataset {dataset}->{test}" if test else f"datasets.{dataset}"
        try:
            check_aus(sections["model"], aus)
        except ValueError as e:
            raise ConfigError(f"{self.source}: {where} (AUs {aus}), point {point.label}: {e}") from None
        cross = {"dataset": f"{dataset}->{test}", "train": dataset, "test": test,
                 "test_reader": self.datasets[test].reader} if test else {"dataset": dataset}
        return TrialConfig(**cross, reader=ds.reader, aus=aus, point=point.index,
                           point_label=point.label, variant=point.variant, params=point.params, seed=seed,
                           **sections)


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
    cross-dataset protocol, one per (pair, point, seed): `dataset` is the pair's label `train->test`."""
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
    # cross-dataset protocol only: the datasets (names in `datasets`) trained and tested on
    train: str | None = None
    test: str | None = None
    test_reader: str | None = None

    @property
    def cross(self) -> bool:
        return self.test is not None

    @property
    def reads(self) -> list[str]:
        """The datasets (names in `datasets`) it reads, the one it trains on first."""
        return [self.train, self.test] if self.cross else [self.dataset]

    def scientific(self) -> dict[str, Any]:
        """The part that determines the result (names and labels excluded)."""
        out = {"reader": self.reader, "aus": self.aus, "seed": self.seed,
               "preprocessing": self.preprocessing.model_dump(mode="json"),
               "model": self.model.identity(),
               "training": _training_for_hash(self.training)}
        if self.cross:  # LOSO configs hash as before, so their stored folds stay valid
            out.update(protocol="cross_dataset", test_reader=self.test_reader)
        return out

    @property
    def hash(self) -> str:
        return stable_hash(self.scientific())

    def flat_params(self) -> dict[str, Any]:
        """`section.key` -> value, for MLflow params."""
        out = {"dataset": self.dataset, "reader": self.reader, "aus": ",".join(map(str, self.aus)),
               "seed": self.seed, "point": self.point_label}
        if self.cross:
            out.update(protocol="cross_dataset", train=self.train, test=self.test, test_reader=self.test_reader)
        for section in SECTIONS:
            out.update(_flatten(getattr(self, section).model_dump(mode="json"), section))
        return out

    def with_training(self, **update) -> TrialConfig:
        return self.model_copy(update={"training": self.training.model_copy(update=update)})


def _training_for_hash(train: TrainConfig) -> dict[str, Any]:
    # Where it runs and with how many threads does not change what it computes. `precision: auto` follows
    # the device as `device: auto` does (bf16 on CUDA, fp32 elsewhere, within the tolerance docs/model.md
    # states), so it is left out too, and folds stored before the field existed keep their key; a
    # precision set explicitly is part of the hash.
    d = train.model_dump(mode="json")
    return {k: v for k, v in d.items() if k not in ("device", "threads") and not (k == "precision" and v == "auto")}


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
    return spec
