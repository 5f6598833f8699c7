"""The live state of a sweep: what the driver-side Tune callback updates as folds start, finish or fail.

`SweepState` is built from the sweep's `Plan` (orchestrator/plan.py). It writes each finished fold to the
results store and MLflow, keeps the pooled metrics of every (dataset, point, seed) current, and hands
its groups to orchestrator/report.py for the table, the `--json` object and the report files.
`microau-sweep report` builds the same state from the store alone (`state_from_store`, no training).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from orchestrator import report
from orchestrator.config import TrialConfig
from orchestrator.plan import Fold, Plan
from orchestrator.report import predictions_csv
from orchestrator.tracking import Tracker, flat_metrics, reason, redact
from orchestrator.version import code_version


@dataclass
class Group:
    """One (dataset, point, seed): a table row and an MLflow parent run."""
    key: str
    trial: TrialConfig
    data_key: str
    folds: List[Fold]
    parent_id: Optional[str] = None
    running: set = field(default_factory=set)
    failed: Dict[str, str] = field(default_factory=dict)  # subject -> error
    pooled: Optional[Dict[str, Any]] = None
    done: int = 0
    dirty: bool = False  # its MLflow parent needs a final update at close()
    data_id: str = ""  # which prepared dataset it reads (orchestrator.data.data_id)


class SweepState:
    def __init__(self, plan: Plan, tracking: bool = True):
        """plan: the sweep's folds, datasets and stored folds (orchestrator.plan.make_plan); its datasets'
        notes (skipped samples, dropped subjects, ...) are listed in every output."""
        from orchestrator.data import data_id

        spec = plan.spec
        self.plan = plan
        self.spec = spec
        self.store = plan.store
        self.folds = {f.key: f for f in plan.folds}
        self.data = plan.info()
        self.groups: Dict[str, Group] = {}
        for f in plan.folds:
            g = self.groups.setdefault(f.group, Group(f.group, f.trial, f.data_key, [], data_id=data_id(f.trial)))
            g.folds.append(f)
        # MLflow is a side channel: the results store is the record. Any failure to reach, create or write
        # the tracking store, here or later, is one warning; tracking is then off for the rest of this run
        # and the next run logs what MLflow missed (begin()).
        self.tracker: Optional[Tracker] = None
        self.tracking_uri = spec.tracking_uri() if tracking else None  # a ConfigError stops the run
        self.tracking_errors: List[str] = []
        if tracking:
            try:
                self.tracker = Tracker(spec)
            except Exception as e:  # noqa: BLE001 - any tracking-backend error
                self._tracking_failed(e)
        self.listeners: List[Any] = []  # fn(event, fold key) after a fold "finished" or "failed"
        self.errors: Dict[str, str] = {}  # fold key -> error of a fold that kept failing
        self.retries: Dict[str, int] = {}
        self.epochs: Dict[str, int] = {}
        self.trained = 0
        self.todo: List[str] = []
        self.t0 = time.time()
        for g in self.groups.values():
            g.done = sum(f.key in plan.stored for f in g.folds)  # intact (damaged ones set aside by the plan)
            if self.tracker is not None:
                g.parent_id = self._track(self.tracker.parent, g.key, g.trial, g.data_key, len(g.folds))
                note = self.note(g)
                if note and self.tracker is not None:
                    self._track(self.tracker.note_dataset, g.parent_id, note)
            if self.tracker is not None:
                # new, or left RUNNING by a killed driver
                g.dirty = self.tracker.parent_status.get(g.key) == "RUNNING"

    # -- events (driver side) -----------------------------------------------------------------------
    def begin(self, todo: Iterable[Fold]) -> None:
        """Before training: bring MLflow up to date with the folds already in the store."""
        self.todo = [f.key for f in todo]
        self.t0 = time.time()
        for key in self.todo:
            self.groups[self.folds[key].group].dirty = True
        for g in self.groups.values():
            if self.tracker is not None and g.done:
                known = self._track(self.tracker.children, g.parent_id)
                for f in g.folds:
                    if self.tracker is None:
                        break
                    if f.key not in known and self.store.has(f.key):
                        rec = self.store.get(f.key)
                        self._track(self._track_fold, g, f, rec["result"], rec["meta"])
                        g.dirty = True
                    elif known and f.key in known and self.tracker.needs_steps(g.parent_id, f.key) \
                            and self.store.has(f.key):  # a child logged before loss curves were
                        self._track(self.tracker.log_loss_steps, g.parent_id, f.key, self.result(f.key).loss_curve)
            self._refresh(g, track=False)

    def started(self, key: str) -> None:
        self.groups[self.folds[key].group].running.add(key)

    def progress(self, key: str, result: Dict[str, Any]) -> None:
        if "epoch" in result:
            self.epochs[key] = int(result["epoch"])

    def retrying(self, key: str, error: str) -> None:
        self.retries[key] = self.retries.get(key, 0) + 1
        self.groups[self.folds[key].group].running.discard(key)

    def failed(self, key: str, error: str) -> None:
        f = self.folds[key]
        g = self.groups[f.group]
        g.running.discard(key)
        g.failed[f.subject] = error
        g.dirty = True
        self.errors[key] = error
        self._tell("failed", key)

    def _tell(self, event: str, key: str) -> None:
        for fn in self.listeners:
            fn(event, key)

    def finished(self, key: str, result: Dict[str, Any], node: Dict[str, Any]) -> None:
        f = self.folds[key]
        g = self.groups[f.group]
        meta = {**f.meta(), **{k: v for k, v in node.items() if v is not None}, "code": code_version()}
        try:
            self.store.put(key, result, meta)
        except OSError as e:  # disk full, folder gone: the fold is lost, the others go on
            self.failed(key, f"its result could not be stored in {self.store.root} ({e})")
            return
        self.trained += 1
        g.dirty = True
        g.running.discard(key)
        g.failed.pop(f.subject, None)
        self.errors.pop(key, None)
        g.done = sum(self.store.has(x.key) for x in g.folds)
        if self.tracker is not None:
            # The results store is the record: an MLflow hiccup must not stop the sweep. The next run
            # logs the folds MLflow is missing (begin()).
            self._track(self._track_fold, g, f, result, meta)
        self._refresh(g)
        self._tell("finished", key)

    def close(self) -> None:
        """Final pooled metrics on every parent this run touched; those with missing folds are marked
        incomplete. Parents finalised by an earlier run and untouched since are left as they are."""
        for g in self.groups.values():
            if g.dirty:
                self._refresh(g, final=True)
                g.dirty = False

    # -- metrics ------------------------------------------------------------------------------------
    def result(self, key: str):
        return self.store.result(key)

    def group_results(self, g: Group) -> List[Any]:
        return [self.result(f.key) for f in g.folds if self.store.has(f.key)]

    def _refresh(self, g: Group, final: bool = False, track: bool = True) -> None:
        from model.metrics import pooled_metrics

        results = self.group_results(g)
        g.pooled = pooled_metrics(results) if results else None
        if track and self.tracker is not None and (results or final):
            self._track(self.tracker.update_parent, g.parent_id, g.pooled, g.done, len(g.folds),
                        failed=sorted(g.failed), final=final)

    def _track(self, call, *args, **kwargs):
        """`call(...)`, or None when it fails: then tracking is off for the rest of this run."""
        try:
            return call(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any tracking-backend error
            self._tracking_failed(e)
            return None

    def _tracking_failed(self, e: Exception) -> None:
        self.tracking_errors.append(reason(e))
        self.tracker = None  # a store that failed once is not waited on again in this run
        if len(self.tracking_errors) == 1:
            print(f"warning: MLflow ({redact(self.tracking_uri or '?')}) unavailable: {reason(e)}. Training "
                  f"goes on; results are stored; run the sweep again later to log them to MLflow.",
                  file=sys.stderr, flush=True)

    def _track_fold(self, g: Group, f: Fold, result: Dict[str, Any], meta: Dict[str, Any]) -> None:
        from model.metrics import pooled_metrics

        r = self.result(f.key) if self.store.has(f.key) else _coerce(result)
        m = pooled_metrics([r], n_boot=1)  # one fold: its own F1/ACC/MER (no CI)
        if m.get("mer"):
            m["mer"] = {k: v for k, v in m["mer"].items() if k != "ci"}
        metrics = flat_metrics({k: m[k] for k in ("f1", "acc", "per_au", "mer", "text_si")
                                if m.get(k) is not None})
        metrics.update(n_test=len(r.sample_ids), n_train=r.n_train,
                       **{f"time_{k}": v for k, v in r.timings.items()})
        for term, curve in r.loss_curve.items():
            if curve:
                metrics[f"final_loss_{term}"] = curve[-1]
        self.tracker.log_fold(g.parent_id, f.key, meta, metrics, predictions_csv(r),
                              extra={"meta": meta, "loss_curve": r.loss_curve, "timings": r.timings},
                              loss_curve=r.loss_curve)

    def log_figures(self) -> None:
        """At the end of a run: the figures of each complete point (orchestrator/figures.py: its own and
        those comparing the points of its dataset and seed) on its MLflow parent, under `figures/`. Drawn
        only for parents that lack them or hold figures of other folds (a digest tag), so a run with
        nothing new draws nothing. Tracking failures are handled as everywhere; a figure that cannot be
        drawn is one warning line, never a failed run."""
        if self.tracker is None:
            return
        import tempfile
        from pathlib import Path

        from orchestrator import figures

        try:
            planned = figures.plan_figures(self, warn=lambda m: None)
        except Exception as e:  # noqa: BLE001 - a figure must never fail the run
            print(f"warning: figures not drawn for MLflow: {reason(e)}", file=sys.stderr, flush=True)
            return
        todo = {}
        for g in self.groups.values():
            mine = [p for p in planned if g.key in p.parents]
            if g.parent_id and mine and figures.complete(g):
                d = figures.digest(mine, self)
                if self.tracker.figures_digest(g.parent_id) != d:
                    todo[g.key] = (mine, d)
        if not todo:
            return
        needed = list({p.name: p for mine, _ in todo.values() for p in mine}.values())
        with tempfile.TemporaryDirectory(prefix="microau-figures-") as tmp:
            try:
                drawn = {Path(p).stem: p for p in figures.write_figures(self, tmp, warn=lambda m: None,
                                                                         only=needed)}
            except Exception as e:  # noqa: BLE001 - a figure must never fail the run
                print(f"warning: figures not drawn for MLflow: {reason(e)}", file=sys.stderr, flush=True)
                return
            for key, (mine, d) in todo.items():
                if self.tracker is None:
                    break
                self._track(self.tracker.log_figures, self.groups[key].parent_id,
                            [drawn[p.name] for p in mine if p.name in drawn], d)

    def note(self, g: Group) -> Dict[str, Any]:
        """What the reports list about the group's prepared datasets (orchestrator.data.NOTES: skipped
        samples, dropped subjects, estimated apexes, corrections, warnings; a cross-dataset group's
        train and test datasets together); {} when there is nothing."""
        from orchestrator.data import NOTES, data_ids

        notes = [self.data_note(i) for i in data_ids(g.trial)]
        note = {k: [x for n in notes for x in n.get(k, [])] for k in NOTES}
        return note if any(note.values()) else {}

    def data_note(self, data_id: str) -> Dict[str, Any]:
        """The notes of one prepared dataset (see `note`); {} when there is nothing."""
        from orchestrator.data import NOTES

        info = self.data.get(data_id) or {}
        note = {k: list(info.get(k) or []) for k in NOTES}
        return note if any(note.values()) else {}

    # -- output (orchestrator/report.py) -------------------------------------------------------------
    def rows(self) -> List[Dict[str, Any]]:
        return report.rows(self)

    def data_notes(self) -> List[Dict[str, Any]]:
        return report.data_notes(self)

    def to_json(self, trained: int, reused: int) -> Dict[str, Any]:
        return report.to_json(self, trained, reused)

    def write_reports(self) -> Dict[str, str]:
        return report.write_reports(self)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def remaining(self) -> Optional[float]:
        left = sum(1 for k in self.todo if not self.store.has(k) and k not in self.errors)
        if not self.trained:
            return None
        return self.elapsed() / self.trained * left


def _coerce(result):
    from model.result import FoldResult

    return FoldResult.coerce(result)


def state_from_store(plan: Plan) -> SweepState:
    """The sweep's state from the results store alone (no training, no MLflow)."""
    state = SweepState(plan, tracking=False)
    state.begin([])
    _warn_other_keys(state, lambda m: print(m, file=sys.stderr))
    return state


def _warn_other_keys(state: SweepState, warn) -> None:
    """Say so when folds of this sweep are stored under a prepared-data key recorded earlier for the same
    dataset: they exist, but were made from other inputs and are not in the table."""
    from dataclasses import replace

    from orchestrator.data import data_id, earlier_keys

    earlier = earlier_keys(state.spec)
    for g in state.groups.values():
        missing = [f for f in g.folds if not state.store.has(f.key)]
        for old in earlier.get(g.data_id, []):
            n = sum(state.store.has(replace(f, data_key=old).key) for f in missing)
            if n:
                warn(f"note: {n} fold(s) of {g.trial.dataset} {g.trial.point_label} seed {g.trial.seed} are "
                     f"stored under an earlier prepared-data key ({old}) of {data_id(g.trial)}: the "
                     f"dataset's coding sheet, frames, corrections or model files differed then (the key "
                     f"hashes their content), so they are not used; run the sweep to train them on this data")
                break
