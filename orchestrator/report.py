"""Sweep state and reports: pooled metrics per (dataset, point, seed) from the results store.

`SweepState` is what the driver-side Tune callback updates as folds start, finish or fail: it writes
each finished fold to the results store and MLflow, keeps the pooled metrics of every point current,
and renders the final table (rich), the `--json` object and `workdir/reports/<sweep>.{csv,json}`.
`microau-sweep report` builds the same state from the store alone (no training).
"""
from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from orchestrator.config import SweepSpec, TrialConfig
from orchestrator.plan import Fold
from orchestrator.store import ResultsStore, atomic_write_text
from orchestrator.tracking import Tracker, flat_metrics, reason, redact
from orchestrator.version import code_version

_POOLED_KEYS = ("f1", "acc", "per_au", "ci", "mer", "text_si")


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
    def __init__(self, spec: SweepSpec, folds: List[Fold], store: ResultsStore, tracking: bool = True,
                 datasets: Optional[Dict[str, Any]] = None):
        """datasets: data id -> what orchestrator.data.dataset_info keeps of the prepared dataset
        (key, subjects, skipped samples, dropped subjects); listed in every output when given."""
        from orchestrator.data import data_id

        self.spec = spec
        self.store = store
        self.folds = {f.key: f for f in folds}
        self.data = {i: vars(d) if not isinstance(d, dict) else d for i, d in (datasets or {}).items()}
        self.groups: Dict[str, Group] = {}
        for f in folds:
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
        warn = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        for g in self.groups.values():
            g.done = sum(self.store.intact(f.key, warn) for f in g.folds)  # damaged records set aside
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
                              extra={"meta": meta, "loss_curve": r.loss_curve, "timings": r.timings})

    def note(self, g: Group) -> Dict[str, Any]:
        """What the reports list about the group's prepared dataset (orchestrator.data.NOTES: skipped
        samples, dropped subjects, estimated apexes, corrections, warnings); {} when there is nothing."""
        from orchestrator.data import NOTES

        info = self.data.get(g.data_id) or {}
        note = {k: list(info.get(k) or []) for k in NOTES}
        return note if any(note.values()) else {}

    # -- output -------------------------------------------------------------------------------------
    def rows(self) -> List[Dict[str, Any]]:
        """One dict per (dataset, point, seed), in sweep order."""
        out = []
        for g in self.groups.values():
            t = g.trial
            row = {"dataset": t.dataset, "point": t.point, "label": t.point_label, "variant": t.variant,
                   "params": dict(t.params), "seed": t.seed, "config_hash": t.hash,
                   "folds_done": g.done, "folds_total": len(g.folds), "complete": g.done == len(g.folds),
                   "failed": [{"subject": s, "error": e} for s, e in sorted(g.failed.items())]}
            note = self.note(g)
            row["skipped_samples"] = [s["sample"] for s in note.get("skipped", [])]
            row["dropped_subjects"] = note.get("dropped_subjects", [])
            row["apex_estimated"] = [f"{a['sample']}:{a['apex']}" for a in note.get("apex_estimated", [])]
            pooled = g.pooled or {}
            for k in _POOLED_KEYS:
                row[k] = pooled.get(k)
            pf = pooled.get("per_fold") or {}
            row["per_fold_mean"] = {k.removesuffix("_mean_of_folds"): pf[k]
                                    for k in ("f1_mean_of_folds", "acc_mean_of_folds") if k in pf} or None
            out.append(row)
        return out

    def data_notes(self) -> List[Dict[str, Any]]:
        """Per prepared dataset with something to say: {dataset, data_id, skipped, dropped_subjects,
        apex_estimated, corrected, warnings}."""
        out, seen = [], set()
        for g in self.groups.values():
            note = self.note(g)
            if note and g.data_id not in seen:
                seen.add(g.data_id)
                out.append({"dataset": g.trial.dataset, "data_id": g.data_id, **note})
        return out

    def to_json(self, trained: int, reused: int) -> Dict[str, Any]:
        return {"sweep": self.spec.name, "trained_folds": trained, "reused_folds": reused,
                "points": self.rows(), "data_notes": self.data_notes()}

    def write_reports(self) -> Dict[str, str]:
        """`<workdir>/reports/<sweep>.csv` and `.json` (atomic)."""
        import pandas as pd

        folder = self.spec.workdir_path() / "reports"
        rows = self.rows()
        flat = []
        for r in rows:
            base = {k: r[k] for k in ("dataset", "point", "label", "seed", "folds_done", "folds_total",
                                      "complete")}
            base["failed_subjects"] = ",".join(x["subject"] for x in r["failed"])
            base["skipped_samples"] = ";".join(r["skipped_samples"])
            base["dropped_subjects"] = ",".join(r["dropped_subjects"])
            base["apex_estimated"] = ";".join(r["apex_estimated"])
            base.update(flat_metrics({k: r[k] for k in _POOLED_KEYS if r[k] is not None}))
            flat.append(base)
        buf = io.StringIO()
        pd.DataFrame(flat).to_csv(buf, index=False, float_format="%.6g")
        csv_path, json_path = folder / f"{self.spec.name}.csv", folder / f"{self.spec.name}.json"
        atomic_write_text(csv_path, buf.getvalue())
        atomic_write_text(json_path, json.dumps({"sweep": self.spec.name, "points": rows,
                                                 "data_notes": self.data_notes()}, indent=1, default=_jsonable))
        return {"csv": str(csv_path), "json": str(json_path)}

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


def _jsonable(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def predictions_csv(r) -> str:
    """Per test sample: id, subject, P(active), label and decision per AU, MER scores/label/prediction."""
    import pandas as pd

    cols: Dict[str, Any] = {"sample_id": r.sample_ids, "subject": r.subjects}
    preds = r.preds
    for j, au in enumerate(r.aus):
        cols[f"prob_AU{au}"] = r.probs[:, j]
        cols[f"label_AU{au}"] = r.labels[:, j]
        cols[f"pred_AU{au}"] = preds[:, j]
    if len(r.mer_classes) and len(r.sample_ids):
        for j, c in enumerate(r.mer_classes):
            cols[f"mer_score_{c}"] = r.mer_scores[:, j]
        cols["mer_label"] = r.mer_labels
        cols["mer_pred"] = r.mer_preds
    buf = io.StringIO()
    pd.DataFrame(cols).to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()


def state_from_store(spec: SweepSpec) -> SweepState:
    """The sweep's state from the results store alone (no training): dataset keys from the cache, or
    from the last run's record when the datasets are not at hand here."""
    from orchestrator.data import prepared_or_recorded
    from orchestrator.plan import expand

    datasets = prepared_or_recorded(spec, warn=lambda m: print(m, file=sys.stderr))
    folds = expand(spec, {n: d.subjects for n, d in datasets.items()},
                   {n: d.key for n, d in datasets.items()})
    state = SweepState(spec, folds, ResultsStore(spec.workdir_path() / "results"), tracking=False,
                       datasets=datasets)
    state.begin([])
    _warn_other_keys(state, lambda m: print(m, file=sys.stderr))
    return state


def _warn_other_keys(state: SweepState, warn) -> None:
    """Say so when folds of this sweep are stored under a prepared-data key recorded earlier for the same
    dataset: they exist, but were made from other inputs and are not in the table."""
    from orchestrator.data import data_id, earlier_keys
    from orchestrator.store import fold_key

    earlier = earlier_keys(state.spec)
    for g in state.groups.values():
        missing = [f for f in g.folds if not state.store.has(f.key)]
        for old in earlier.get(g.data_id, []):
            n = sum(state.store.has(fold_key(f.trial.hash, f.subject, f.trial.seed, old)) for f in missing)
            if n:
                warn(f"note: {n} fold(s) of {g.trial.dataset} {g.trial.point_label} seed {g.trial.seed} are "
                     f"stored under an earlier prepared-data key ({old}) of {data_id(g.trial)}: the "
                     f"dataset's coding sheet, frames, corrections or model files differed then (the key "
                     f"hashes their content), so they are not used; run the sweep to train them on this data")
                break


def compare_points(state: SweepState, a: int, b: int) -> List[Dict[str, Any]]:
    """Point a minus point b, per (dataset, seed): pooled F1 difference with a subject-bootstrap CI."""
    from model.metrics import paired_difference

    from orchestrator.config import ConfigError

    n = len(state.spec.points())
    for k in (a, b):
        if not 0 <= k < n:
            raise ConfigError(f"{state.spec.source}: --compare {a} {b}: points are 0..{n - 1}")
    by = {(g.trial.dataset, g.trial.seed, g.trial.point): g for g in state.groups.values()}
    out = []
    for (dataset, seed, point), ga in by.items():
        if point != a:
            continue
        gb = by[(dataset, seed, b)]
        for g in (ga, gb):
            if g.done != len(g.folds):
                raise ConfigError(f"point {g.trial.point} ({g.trial.point_label}) of {dataset} seed {seed} "
                                  f"has {g.done}/{len(g.folds)} folds; run the sweep to finish it first")
        d = paired_difference(state.group_results(ga), state.group_results(gb))
        out.append({"dataset": dataset, "seed": seed, "a": ga.trial.point_label, "b": gb.trial.point_label,
                    "point_a": a, "point_b": b, "diff": d["f1_diff"], "ci": d["f1_diff_ci"],
                    "subjects": d["n_subjects"], "paired": d})
    return out
