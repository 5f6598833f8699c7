"""The results of a sweep as the store holds them: one `Group` per (dataset, point, seed) with its folds
and pooled metrics, the prepared datasets' notes, and the report views of them (rows, `--json`, report
files; orchestrator/reporting/report.py).

`SweepResults` is built from the sweep's `Plan` (orchestrator/planning/plan.py) and reads the results
store; `results_from_store(plan)` is what `report` shows. The live state of a running sweep
(orchestrator/execution/state.py) extends it with the events of folds starting, finishing and failing,
and MLflow.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.planning.data import NOTES, data_id, data_ids, earlier_keys
from orchestrator.planning.plan import Fold, Plan
from orchestrator.reporting import report
from orchestrator.spec.schema import TrialConfig

logger = logging.getLogger(__name__)


@dataclass
class Group:
    """One (dataset, point, seed): a table row and an MLflow parent run."""
    key: str
    trial: TrialConfig
    data_key: str
    folds: list[Fold]
    parent_id: str | None = None
    running: set = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # subject -> error
    pooled: dict[str, Any] | None = None
    done: int = 0
    dirty: bool = False  # its MLflow parent needs a final update at close()
    data_id: str = ""  # which prepared dataset it reads (orchestrator.planning.data.data_id)


class SweepResults:
    """The folds of a plan grouped per (dataset, point, seed), with the pooled metrics of what the store
    holds."""

    def __init__(self, plan: Plan):
        """plan: the sweep's folds, datasets and stored folds (orchestrator.planning.plan.make_plan); its
        datasets' notes (skipped samples, dropped subjects, ...) are listed in every output."""
        self.plan = plan
        self.sweep = plan.sweep
        self.store = plan.store
        self.folds = {f.key: f for f in plan.folds}
        self.data = plan.info()
        self.groups: dict[str, Group] = {}
        for f in plan.folds:
            g = self.groups.setdefault(f.group, Group(f.group, f.trial, f.data_key, [], data_id=data_id(f.trial)))
            g.folds.append(f)
        for g in self.groups.values():
            g.done = sum(f.key in plan.stored for f in g.folds)  # intact (damaged ones set aside by the plan)

    def add_folds(self, folds: list[Fold]) -> list[Group]:
        """Folds planned after these results were built (a search's new candidate,
        orchestrator/execution/search.py) -> the groups they made (a group already here keeps its own)."""
        new = []
        for f in folds:
            if f.key in self.folds:
                continue
            self.folds[f.key] = f
            g = self.groups.get(f.group)
            if g is None:
                g = self.groups[f.group] = Group(f.group, f.trial, f.data_key, [], data_id=data_id(f.trial))
                new.append(g)
            g.folds.append(f)
        for g in new:
            g.done = sum(self.store.intact(f.key) for f in g.folds)
        return new

    # -- metrics ------------------------------------------------------------------------------------
    def result(self, key: str):
        return self.store.result(key)

    def group_results(self, g: Group) -> list[Any]:
        return [self.result(f.key) for f in g.folds if self.store.has(f.key)]

    def pool(self, g: Group) -> list[Any]:
        """Pool the group's stored folds into `g.pooled`; returns its results."""
        from model.metrics import pooled_metrics  # heavy (sklearn, torch): when metrics are first needed

        results = self.group_results(g)
        g.pooled = pooled_metrics(results) if results else None
        return results

    def inputs(self, g: Group) -> list[dict[str, Any]]:
        """The prepared datasets the group reads, as MLflow dataset inputs (orchestrator.tracking.client):
        {name, digest: the prepared-data key, source: the dataset folder(s), samples, subjects, context:
        `loso`, or `train` / `test` for a unit across datasets}."""
        out = []
        for i, (name, did) in enumerate(zip(g.trial.reads, data_ids(g.trial), strict=False)):
            info = self.data.get(did) or {}
            roots = []
            for m in self.sweep.members(name):
                ds = self.sweep.datasets[m]
                try:
                    roots.append(str(ds.root))
                except ConfigError:  # ${VAR} unset here (a recorded dataset): the path as the file writes it
                    roots.append(ds.spec.root)
            out.append({"name": name, "digest": info.get("key") or (g.data_key if i == 0 else ""),
                        "source": " + ".join(roots), "samples": info.get("samples"),
                        "subjects": len(info.get("subjects") or []),
                        "context": ("train" if i == 0 else "test") if g.trial.cross else "loso"})
        return out

    def note(self, g: Group) -> dict[str, Any]:
        """What the reports list about the group's prepared datasets (orchestrator.planning.data.NOTES:
        skipped samples, dropped subjects, estimated apexes, corrections, warnings; a cross-dataset
        group's train and test datasets together); {} when there is nothing."""
        notes = [self.data_note(i) for i in data_ids(g.trial)]
        note = {k: [x for n in notes for x in n.get(k, [])] for k in NOTES}
        return note if any(note.values()) else {}

    def data_note(self, data_id: str) -> dict[str, Any]:
        """The notes of one prepared dataset (see `note`); {} when there is nothing."""
        info = self.data.get(data_id) or {}
        note = {k: list(info.get(k) or []) for k in NOTES}
        return note if any(note.values()) else {}

    # -- output (orchestrator/reporting/report.py) ----------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        return report.rows(self)

    def data_notes(self) -> list[dict[str, Any]]:
        return report.data_notes(self)

    def to_json(self, trained: int, reused: int) -> dict[str, Any]:
        return report.to_json(self, trained, reused)

    def write_reports(self) -> dict[str, str]:
        return report.write_reports(self)


def results_from_store(plan: Plan) -> SweepResults:
    """The sweep's results from the results store alone (no training, no MLflow)."""
    results = SweepResults(plan)
    for g in results.groups.values():
        results.pool(g)
    _warn_other_keys(results)
    return results


def _warn_other_keys(results: SweepResults) -> None:
    """Say so when folds of this sweep are stored under a prepared-data key recorded earlier for the same
    dataset: they exist, but were made from other inputs and are not in the table."""
    earlier = earlier_keys(results.sweep)
    for g in results.groups.values():
        missing = [f for f in g.folds if not results.store.has(f.key)]
        for old in earlier.get(g.data_id, []):
            n = sum(results.store.has(replace(f, data_key=old).key) for f in missing)
            if n:
                logger.warning(f"note: {n} fold(s) of {g.trial.dataset} {g.trial.point_label} seed {g.trial.seed} "
                               f"are stored under an earlier prepared-data key ({old}) of {data_id(g.trial)}: "
                               f"the dataset's coding sheet, frames, corrections or model files differed then "
                               f"(the key hashes their content), so they are not used; run the sweep to train "
                               f"them on this data")
                break
