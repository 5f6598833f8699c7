"""The paper's reported numbers in a sweep file, and their difference from the measured ones.

A variant or a grid value may carry what the paper reports for it, per dataset of the file:

    variants:
      full: {paper: {casme2: {f1: 0.782, acc: 0.917}, samm: {f1: 0.730, acc: 0.863}}}
    grid:
      training.alpha:
        - {value: 0.2, paper: {casme2: {f1: 0.770, acc: 0.908}}}
        - 0.4                                   # a plain value: no paper numbers

They are labels for the report: they are not part of any trial's config, so adding or fixing them never
changes a config hash (and never retrains a fold). A point's numbers are its variant's and its grid
values' together; two of them giving the same dataset and metric is an error.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from orchestrator.errors import ConfigError


class PaperMetrics(BaseModel):
    """What a paper table reports for one point on one dataset."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    f1: float | None = Field(None, ge=0, le=1)  # AU detection F1, mean over AUs (Tables II-IX)
    acc: float | None = Field(None, ge=0, le=1)  # AU detection accuracy, mean over AUs (Tables II-VIII)
    text_si: float | None = Field(None, ge=-1, le=1)  # Table III TextSi, a cosine similarity
    mer_f1: float | None = Field(None, ge=0, le=1)  # Table X "F1" of zero-shot MER (compared with UF1)


# paper key -> (heading, how to read the measured value from a report row)
MEASURED = {
    "f1": ("F1", lambda r: r.get("f1")),
    "acc": ("ACC", lambda r: r.get("acc")),
    "text_si": ("TextSi", lambda r: r.get("text_si")),
    "mer_f1": ("MER F1 (UF1)", lambda r: (r.get("mer") or {}).get("uf1")),
}
METRICS = tuple(PaperMetrics.model_fields)
_ADAPTER = TypeAdapter(dict[str, PaperMetrics])


def parse(value: Any, where: str, datasets, source: str | None) -> dict[str, dict[str, float]]:
    """`paper:` mapping -> {dataset: {metric: value}} (metrics not given are left out). `where` is the
    dotted key of the mapping in the file (`variants.full.paper`), named by every error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where}: write a mapping of dataset -> metrics, e.g. "
                          f"{{{next(iter(datasets))}: {{f1: 0.782, acc: 0.917}}}} (got {value!r})")
    for name in value:
        if name not in datasets:
            raise ConfigError(f"{source}: {where}.{name}: no dataset {name!r} in this file (datasets: "
                              f"{', '.join(datasets)}); paper numbers are given per dataset of the file")
    try:
        parsed = _ADAPTER.validate_python(value)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join([where, *map(str, err["loc"])])
            if err["type"] == "extra_forbidden":
                lines.append(f"{source}: {loc}: unknown paper metric {str(err['loc'][-1])!r} (known: "
                             f"{', '.join(METRICS)})")
            else:
                msg = err["msg"].removeprefix("Value error, ")
                lines.append(f"{source}: {loc}: {msg} (got {err.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None
    return {d: m.model_dump(exclude_none=True) for d, m in parsed.items() if m.model_dump(exclude_none=True)}


def split_grid_value(value: Any, where: str, datasets, source: str | None) -> tuple[Any, dict]:
    """A grid value as written -> (the value, its paper numbers). `{value: V, paper: {...}}` (exactly
    these keys, `paper` optional) carries numbers; anything else is a plain value."""
    if isinstance(value, dict) and "value" in value and set(value) <= {"value", "paper"}:
        return value["value"], parse(value.get("paper"), f"{where}.paper", datasets, source)
    return value, {}


def merge(parts: list[tuple[str, dict[str, dict[str, float]]]], label: str, source: str | None) -> dict:
    """A point's numbers from its variant's and grid values' ((where, numbers) each); the same dataset
    and metric from two of them is an error naming both."""
    out: dict[str, dict[str, float]] = {}
    origin: dict[tuple[str, str], str] = {}
    for where, numbers in parts:
        for dataset, metrics in numbers.items():
            for metric, v in metrics.items():
                if (dataset, metric) in origin:
                    raise ConfigError(f"{source}: point {label}: paper {dataset}.{metric} is given by both "
                                      f"{origin[dataset, metric]} and {where}; give it in one place")
                origin[dataset, metric] = where
                out.setdefault(dataset, {})[metric] = float(v)
    return out


def compare(row: dict[str, Any], paper: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """{metric: {paper, measured, diff}} for each metric the paper gives; diff = measured - paper, None
    where this tool has no measured value (yet)."""
    out = {}
    for metric, ref in paper.items():
        measured = MEASURED[metric][1](row)
        out[metric] = {"paper": ref, "measured": measured,
                       "diff": None if measured is None else float(measured) - ref}
    return out
