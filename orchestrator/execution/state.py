"""The live state of a running sweep: what the driver-side Tune callback updates as folds start, finish
or fail.

`SweepState` extends the sweep's results (orchestrator/reporting/results.py) with the events of a run: it
writes each finished fold to the results store and MLflow, keeps the pooled metrics of every (dataset,
point, seed) current, and tells its listeners (the views). MLflow is a side channel: the results store is
the record, and any failure to reach, create or write the tracking store is one warning, after which
tracking is off for the rest of the run (the next run logs what MLflow missed).
"""
from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from model.result import FoldResult
from orchestrator.planning.plan import Fold, Plan
from orchestrator.reporting import figures
from orchestrator.reporting.report import predictions_csv
from orchestrator.reporting.results import Group, SweepResults
from orchestrator.spec.resolved import Sweep
from orchestrator.tracking.client import Tracker, flat_metrics, reason, redact
from orchestrator.tracking.version import code_version

logger = logging.getLogger(__name__)


_NODE_LOST = re.compile(r"node (has )?died|NodeDiedError|node .{0,80}(was |is )?(lost|removed|dead)", re.I)
_WORKER_LOST = re.compile(r"ActorDiedError|RayActorError|WorkerCrashedError|worker (process )?(died|crashed)|"
                          r"actor died|actor .{0,60} is unavailable|Socket closed", re.I)


def lost(error: str) -> str | None:
    """'its node was lost' / 'its worker process was lost' when a trial's error says so (Ray's own
    words for a dead node or actor), else None: an error of the fold itself."""
    if _NODE_LOST.search(error):
        return "its node was lost"
    if _WORKER_LOST.search(error):
        return "its worker process was lost"
    return None


def open_tracker(sweep: Sweep) -> Tracker | Exception:
    """The sweep's MLflow connection (store, experiment), or the error that opening it raised (any
    tracking-backend error: SweepState turns it into one warning and goes on without tracking)."""
    try:
        return Tracker(sweep)
    except Exception as e:  # noqa: BLE001 - any tracking-backend error
        return e


class SweepState(SweepResults):
    def __init__(self, plan: Plan, tracking: bool = True, tracker: Tracker | Exception | None = None):
        """`tracker`: the MLflow connection opened beforehand (`open_tracker`, e.g. while Ray starts), or
        the error that opening it raised; None: opened here (when `tracking`)."""
        super().__init__(plan)
        self.tracker: Tracker | None = None
        self.tracking_uri = plan.sweep.tracking_uri if tracking else None  # a ConfigError stops the run
        self.tracking_errors: list[str] = []
        if tracking:
            opened = open_tracker(plan.sweep) if tracker is None else tracker
            if isinstance(opened, Exception):
                self._tracking_failed(opened)
            else:
                self.tracker = opened
        self.listeners: list[Callable[[str, str], None]] = []  # fn(event, fold key) after "finished"/"failed"
        self.errors: dict[str, str] = {}  # fold key -> error of a fold that kept failing
        self.retries: dict[str, int] = {}
        self.epochs: dict[str, int] = {}
        self.trained = 0
        self.todo: list[str] = []
        self.t0 = time.time()
        for g in self.groups.values():
            self._open(g)

    def _open(self, g: Group) -> None:
        """The group's MLflow parent run, found or created."""
        if self.tracker is not None:
            g.parent_id = self._track(self.tracker.parent, g.key, g.trial, g.data_key, len(g.folds),
                                      self.inputs(g))
            note = self.note(g)
            if note and self.tracker is not None:
                self._track(self.tracker.note_dataset, g.parent_id, note)
        if self.tracker is not None:
            # new, or left RUNNING by a killed driver
            g.dirty = self.tracker.parent_status.get(g.key) == "RUNNING"

    def add_folds(self, folds: list[Fold]) -> None:
        """Folds planned while the sweep runs (a search's new candidate): their groups' MLflow parents, and
        the folds of theirs already stored brought into MLflow, as `begin` does for the planned ones."""
        for g in super().add_folds(folds):
            self._open(g)
            self._catch_up(g)

    # -- events (driver side) -----------------------------------------------------------------------
    def begin(self, todo: Iterable[Fold]) -> None:
        """Before training: bring MLflow up to date with the folds already in the store."""
        self.todo = [f.key for f in todo]
        self.t0 = time.time()
        for key in self.todo:
            self.groups[self.folds[key].group].dirty = True
        for g in self.groups.values():
            self._catch_up(g)

    def _catch_up(self, g: Group) -> None:
        """The group's stored folds that MLflow misses logged; its pooled metrics computed."""
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

    def tag(self, group: str, tags: dict[str, str]) -> None:
        """Tags on a group's MLflow parent (a search candidate's status), when tracked."""
        g = self.groups.get(group)
        if self.tracker is not None and g is not None and g.parent_id:
            self._track(self.tracker.tag, g.parent_id, tags)

    def started(self, key: str) -> None:
        self.groups[self.folds[key].group].running.add(key)

    def progress(self, key: str, result: dict[str, Any]) -> None:
        if "epoch" in result:
            self.epochs[key] = int(result["epoch"])

    def retrying(self, key: str, error: str, nodes_lost: bool = False) -> None:
        """A fold's trial failed and Tune runs it again: one line saying which fold, why (its node or its
        worker process was lost, or its error) and which retry of how many. `nodes_lost`: a node of the
        cluster was lost in this run (then a lost worker is put down to it)."""
        n = self.retries[key] = self.retries.get(key, 0) + 1
        f = self.folds[key]
        self.groups[f.group].running.discard(key)
        name = f"{f.trial.dataset} {f.trial.point_label} seed {f.trial.seed} {f.subject}"
        why = lost(error)
        if why and nodes_lost:
            why = "its node was lost"
        logger.warning(f"fold {name}: {why or f'failed ({error})'}, retrying ({n} of {self.sweep.retries})")

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

    def finished(self, key: str, result: dict[str, Any], node: dict[str, Any]) -> None:
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

    def _refresh(self, g: Group, final: bool = False, track: bool = True) -> None:
        results = self.pool(g)
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
        self.tracking_errors.append(reason(e, self.tracking_uri))
        self.tracker = None  # a store that failed once is not waited on again in this run
        if len(self.tracking_errors) == 1:
            logger.warning(f"warning: MLflow ({redact(self.tracking_uri or '?')}) unavailable: "
                           f"{self.tracking_errors[0]}. "
                           f"Training goes on; results are stored; run the sweep again later to log them to MLflow.")

    def _track_fold(self, g: Group, f: Fold, result: dict[str, Any], meta: dict[str, Any]) -> None:
        from model.metrics import pooled_metrics  # heavy: loaded by the first fold's metrics already

        r = self.result(f.key) if self.store.has(f.key) else FoldResult.coerce(result)
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
                              loss_curve=r.loss_curve, inputs=self.inputs(g))

    def log_figures(self) -> None:
        """At the end of a run: the figures of each complete point (orchestrator/reporting/figures.py: its own and
        those comparing the points of its dataset and seed) on its MLflow parent, under `figures/`. Drawn
        only for parents that lack them or hold figures of other folds (a digest tag), so a run with
        nothing new draws nothing. Tracking failures are handled as everywhere; a figure that cannot be
        drawn is one warning line, never a failed run."""
        if self.tracker is None:
            return
        try:
            with figures.quiet():  # the notes of `report --figures` are not for the end of a run
                planned = figures.plan_figures(self)
        except Exception as e:  # noqa: BLE001 - a figure must never fail the run
            logger.warning(f"warning: figures not drawn for MLflow: {reason(e)}")
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
                with figures.quiet():
                    drawn = {Path(p).stem: p for p in figures.write_figures(self, tmp, only=needed)}
            except Exception as e:  # noqa: BLE001 - a figure must never fail the run
                logger.warning(f"warning: figures not drawn for MLflow: {reason(e)}")
                return
            for key, (mine, d) in todo.items():
                if self.tracker is None:
                    break
                self._track(self.tracker.log_figures, self.groups[key].parent_id,
                            [drawn[p.name] for p in mine if p.name in drawn], d)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def remaining(self) -> float | None:
        left = sum(1 for k in self.todo if not self.store.has(k) and k not in self.errors)
        if not self.trained:
            return None
        return self.elapsed() / self.trained * left
