"""The candidates of a search sweep (`search:`, orchestrator/spec/search.py), recorded in
`<workdir>/search/<sweep name>.json` (written atomically, by the driver only), and the sweep whose
points they are.

Each candidate is {index, dataset, params, status, folds_done, folds_total, metric, error}: `status` is
`running` (drawn, not finished: a killed search left it so), `complete` (every fold), `stopped` (by the
early-stopping scheduler after `folds_done` folds) or `failed`. A rerun of the search keeps the complete
and stopped ones, runs the others again (their stored folds are reused) and draws new ones until the
search holds `num_samples` candidates that finished.

`with_candidates(sweep)` is the sweep whose points are the recorded candidates, in the order they were
drawn (point K = candidate K, label `cK key=value ...`): `report`, `train --point K`, `fold` and
`report --compare` read it as they read a grid sweep.
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError, StoreError
from orchestrator.planning.store import atomic_write_text
from orchestrator.spec import search as search_spec
from orchestrator.spec.resolved import Sweep
from orchestrator.spec.schema import Point, TrialConfig, stable_hash

FINISHED = ("complete", "stopped")
VERSION = 1


@dataclass
class Candidate:
    index: int
    dataset: str
    params: dict[str, Any]
    status: str = "running"  # running | complete | stopped | failed
    folds_done: int = 0
    folds_total: int | None = None
    metric: float | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass
class Candidates:
    """The record of one search sweep's candidates."""
    path: Path
    fingerprint: str
    items: list[Candidate] = field(default_factory=list)

    def of(self, dataset: str) -> list[Candidate]:
        return [c for c in self.items if c.dataset == dataset]

    def add(self, dataset: str, params: dict[str, Any]) -> Candidate:
        c = Candidate(index=len(self.items), dataset=dataset, params=dict(params))
        self.items.append(c)
        return c

    def save(self) -> None:
        doc = {"version": VERSION, "fingerprint": self.fingerprint,
               "candidates": [c.__dict__ for c in self.items]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(doc, indent=1, default=str))


def record_path(sweep: Sweep) -> Path:
    return sweep.paths.search / f"{sweep.name}.json"


def base_trials(sweep: Sweep) -> list[TrialConfig]:
    """The search's base config per dataset it searches (the sweep file without the sampled keys)."""
    spec = sweep.spec
    names = [spec.search.dataset] if spec.search.dataset else list(spec.datasets)
    base = spec.points()[0]
    return [spec.resolve(n, base, spec.seeds[0]) for n in names]


def fingerprint(sweep: Sweep) -> str:
    """What the recorded candidates depend on: the sampled space, the searcher and its metric, and the
    base config (its hash per dataset). `num_samples`, `max_concurrent` and `early_stop` may change
    between runs (more candidates, another stopping rule); the rest may not."""
    s = sweep.spec.search
    return stable_hash({"space": {k: d.model_dump(exclude_none=True) for k, d in s.space.items()},
                        "algorithm": s.algorithm, "metric": s.metric, "mode": s.mode, "seed": s.seed,
                        "base": [t.hash for t in base_trials(sweep)]})


def load_candidates(sweep: Sweep) -> Candidates:
    """The recorded candidates of a search sweep (none yet: an empty record); a ConfigError when they were
    drawn for another search section or base config."""
    path, fp = record_path(sweep), fingerprint(sweep)
    if not path.exists():
        return Candidates(path=path, fingerprint=fp)
    try:
        doc = json.loads(path.read_text())
        items = [Candidate(**c) for c in doc["candidates"]]
        recorded = doc["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path}: the search's record of candidates cannot be read ({e}); move it away to "
                         f"start the search afresh (stored folds are reused)") from None
    if recorded != fp:
        raise ConfigError(f"{sweep.source}: search: the candidates in {path} were drawn for another search "
                          f"section or base config (space, algorithm, metric, mode, seed, or the sections "
                          f"they sample into changed). Restore the file as it was, give the sweep another "
                          f"name, or move {path} away to start a new search (its stored folds are reused "
                          f"where a candidate repeats a config)")
    return Candidates(path=path, fingerprint=fp, items=items)


def point_of(c: Candidate) -> Point:
    """Candidate K as point K of the sweep (label `cK key=value ...`)."""
    return Point(index=c.index, variant=f"c{c.index}", params=dict(c.params),
                 grid={k: search_spec.short(v) for k, v in c.params.items()})


def trial_of(sweep: Sweep, c: Candidate) -> TrialConfig:
    return sweep.spec.resolve(c.dataset, point_of(c), sweep.spec.seeds[0])


def with_candidates(sweep: Sweep, candidates: Candidates | None = None) -> Sweep:
    """The search sweep whose points are its candidates (recorded, or `candidates`); a sweep without
    `search:` unchanged."""
    if sweep.spec.search is None:
        return sweep
    candidates = candidates if candidates is not None else load_candidates(sweep)
    points = tuple(point_of(c) for c in candidates.items)
    trials, seen = [], set()
    for c in candidates.items:  # a candidate that drew an earlier one's values is that point (no trial of its own)
        t = trial_of(sweep, c)
        if (t.dataset, t.hash) not in seen:
            seen.add((t.dataset, t.hash))
            trials.append(t)
    return replace(sweep, points=points, trials=tuple(trials))


def same_as(sweep: Sweep, c: Candidate, candidates: Candidates) -> Candidate:
    """The first candidate that drew the same config as `c` (`c` itself, mostly)."""
    h = trial_of(sweep, c).hash
    return next(o for o in candidates.of(c.dataset) if trial_of(sweep, o).hash == h)


def base_sweep(sweep: Sweep) -> Sweep:
    """The search sweep with its base config as its one point (what `run` prepares data for and `plan`
    counts folds of)."""
    return replace(sweep, points=tuple(sweep.spec.points()), trials=tuple(base_trials(sweep)))


def subject_order(subjects: Sequence[str], seed: int) -> list[str]:
    """The order every candidate of a search runs its folds in: the subjects shuffled with the search's
    seed (the same for every candidate, so the scheduler compares them on the same subjects)."""
    order = sorted(set(map(str, subjects)))
    random.Random(seed).shuffle(order)
    return order
