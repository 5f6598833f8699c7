"""The `search:` section of a sweep file: a hyperparameter search whose unit is a whole LOSO point.

A search samples `num_samples` candidates from `space` (dotted keys of the model and training sections,
each a distribution), one search per dataset (or on the one `dataset` it names). Each candidate is an
ordinary point of the sweep: its config is the sweep's base config with the sampled values set, so its
config hash, fold keys, results-store records and MLflow runs are those of a grid point with the same
values (docs/sweeps.md, "Searching"). This module holds the schema and what is pure about a candidate
(its label, its `variants:` entry); orchestrator/planning/candidates.py records them, and
orchestrator/execution/search.py runs them on Ray Tune's searchers and schedulers.
"""
from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The metric a search optimises -> where it sits in model.metrics.pooled_metrics' result
METRICS = {"f1": ("f1",), "acc": ("acc",), "mer_uf1": ("mer", "uf1")}
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
SEARCHABLE = ("model", "training")  # preprocessing would change the prepared data of each candidate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimension(_Strict):
    """One key of the space: exactly one of `uniform: [lo, hi]`, `loguniform: [lo, hi]` (lo > 0),
    `choice: [a, b, ...]`, `randint: [lo, hi]` (integers lo..hi-1, as Ray Tune's)."""
    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    choice: list[Any] | None = None
    randint: list[int] | None = None

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in DISTRIBUTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)} (got {given or 'none'}), e.g. "
                             f"{{loguniform: [0.001, 0.1]}}")
        kind = given[0]
        v = getattr(self, kind)
        if kind == "choice":
            if not v:
                raise ValueError("choice: list at least one value")
            return self
        if len(v) != 2 or not v[0] < v[1]:
            raise ValueError(f"{kind}: give [low, high] with low < high (got {v})")
        if kind == "loguniform" and v[0] <= 0:
            raise ValueError(f"loguniform: low must be > 0 (got {v[0]})")
        if kind == "randint" and v[1] - v[0] < 1:
            raise ValueError(f"randint: [low, high) holds no integer (got {v})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)

    @property
    def args(self) -> list[Any]:
        return list(getattr(self, self.kind))

    def probes(self) -> list[Any]:
        """Values a sample can take at the edges (every choice): each must make a valid config."""
        v = self.args
        if self.kind == "choice":
            return v
        if self.kind == "randint":
            return [v[0], v[1] - 1]
        # and a value between with a fractional part: a range over an integer key is an error now, not
        # when a candidate draws 42.7 epochs (randint is the range of integers)
        inside = v[0] * (v[1] / v[0]) ** 0.382 if self.kind == "loguniform" else v[0] + 0.382 * (v[1] - v[0])
        return [float(v[0]), float(v[1]), float(inside)]

    def contains(self, value: Any) -> bool:
        v = self.args
        if self.kind == "choice":
            return value in v
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        if self.kind == "randint":
            return float(value).is_integer() and v[0] <= value < v[1]
        return v[0] <= value <= v[1]


class EarlyStopSpec(_Strict):
    """ASHA over subjects: a candidate is compared with the others after `grace_folds` folds, and after
    `grace_folds * reduction_factor^k` folds; the best `1 / reduction_factor` go on."""
    grace_folds: int = Field(ge=1)
    reduction_factor: float = Field(3, gt=1)


class SearchSpec(_Strict):
    algorithm: Literal["optuna", "random"] = "optuna"
    metric: Literal["f1", "acc", "mer_uf1"] = "f1"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(ge=1)
    max_concurrent: int = Field(1, ge=1)  # candidates in flight (their folds fill the cluster)
    space: dict[str, Dimension]
    early_stop: EarlyStopSpec | None = None  # None: every candidate runs every fold
    dataset: str | None = None  # None: one search per dataset of the file
    seed: int = 0  # the searcher's seed and the shuffle of the subject order

    @model_validator(mode="after")
    def _optuna_choices(self):
        if self.algorithm == "optuna":
            for key, dim in self.space.items():
                if dim.kind == "choice" and any(not isinstance(x, (str, int, float, bool, type(None)))
                                                for x in dim.args):
                    raise ValueError(f"space.{key}: Optuna chooses among plain values (numbers, strings, true/"
                                     f"false, null), got {dim.args}; use algorithm: random, or a grid")
        return self

    @field_validator("space")
    @classmethod
    def _some_key(cls, v):
        if not v:
            raise ValueError("name at least one dotted key to search, e.g. training.lr_head: {loguniform: "
                             "[0.001, 0.1]}")
        for key in v:
            if key.split(".")[0] not in SEARCHABLE:
                raise ValueError(f"{key!r}: a search samples keys of {' and '.join(SEARCHABLE)} (preprocessing "
                                 f"changes the prepared data; sweep it with grid: or variants:)")
        return v


def metric_of(pooled: dict[str, Any] | None, metric: str) -> float | None:
    """The search metric in `pooled` (model.metrics.pooled_metrics), None when absent."""
    node: Any = pooled
    for part in METRICS[metric]:
        if not isinstance(node, dict) or node.get(part) is None:
            return None
        node = node[part]
    value = float(node)
    return None if math.isnan(value) else value


def short(value: Any) -> Any:
    """A sampled value as a label shows it (4 significant digits)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


def label(index: int, params: dict[str, Any]) -> str:
    """A candidate's point label: `c3 training.lr_head=0.0123`."""
    return " ".join([f"c{index}"] + [f"{k}={short(v)}" for k, v in params.items()])


def variant_entry(name: str, params: dict[str, Any]) -> str:
    """The candidate as a `variants:` entry to paste into a sweep file (exact values, YAML flow style)."""
    body = ", ".join(f"{k}: {json.dumps(v)}" for k, v in params.items())
    return f"variants:\n  {name}: {{{body}}}"
