"""Tables and exports of a sweep: the dry-run summary of its plan (`plan_document`), the rows of pooled
metrics per (dataset, point, seed), the `--json` object, `<workdir>/reports/<sweep>.{csv,json}`, per-fold
`predictions.csv`, and `report --compare`.

They read a sweep's results (`SweepResults`, orchestrator/reporting/results.py: what the store holds, or
the live state of a running sweep, which extends it) and write nothing but the report files.
"""
from __future__ import annotations

import io
import json
from typing import Any, Protocol

from orchestrator.errors import ConfigError
from orchestrator.planning.data import data_id, data_ids, unreachable
from orchestrator.planning.store import atomic_write_text
from orchestrator.spec.paper import compare
from orchestrator.tracking.client import flat_metrics
from preprocessing.annotations import get_reader
from preprocessing.errors import MicroAUError


class Results(Protocol):
    """What the reports read of a sweep's results: `SweepResults` (orchestrator/reporting/results.py, which
    builds on this module) and the live `SweepState` provide it."""
    sweep: Any  # orchestrator.spec.resolved.Sweep
    groups: dict[str, Any]  # group key -> orchestrator.reporting.results.Group

    def group_results(self, g: Any) -> list[Any]: ...

    def note(self, g: Any) -> dict[str, Any]: ...

    def data_note(self, data_id: str) -> dict[str, Any]: ...


_POOLED_KEYS = ("f1", "acc", "per_au", "ci", "mer", "text_si")


def rows(state: Results) -> list[dict[str, Any]]:
    """The table of a `SweepState`: one dict per (dataset, point, seed), in sweep order. `paper`: per
    metric the paper reports for the point (sweep file `paper:`), {paper, measured, diff}; else None."""
    points = state.sweep.points
    out = []
    for g in state.groups.values():
        t = g.trial
        row = {"dataset": t.dataset, "protocol": t.protocol,
               "point": t.point, "label": t.point_label, "variant": t.variant,
               "params": dict(t.params), "seed": t.seed, "config_hash": t.hash,
               "folds_done": g.done, "folds_total": len(g.folds), "complete": g.done == len(g.folds),
               "failed": [{"subject": s, "error": e} for s, e in sorted(g.failed.items())]}
        note = state.note(g)
        row["skipped_samples"] = [s["sample"] for s in note.get("skipped", [])]
        row["dropped_subjects"] = note.get("dropped_subjects", [])
        row["apex_estimated"] = [f"{a['sample']}:{a['apex']}" for a in note.get("apex_estimated", [])]
        pooled = g.pooled or {}
        for k in _POOLED_KEYS:
            row[k] = pooled.get(k)
        pf = pooled.get("per_fold") or {}
        row["per_fold_mean"] = {k.removesuffix("_mean_of_folds"): pf[k]
                                for k in ("f1_mean_of_folds", "acc_mean_of_folds") if k in pf} or None
        numbers = points[t.point].paper.get(t.dataset)
        row["paper"] = compare(row, numbers) if numbers else None
        out.append(row)
    return out


def seed_summaries(state: Results, table: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per (dataset, point) of a sweep with several seeds: mean ± sd over the seeds of the pooled metrics,
    and F1/ACC pooled over all seeds (model.metrics.seed_summary), over the seeds whose folds are all
    finished (`seeds_used`); `summary` is None while fewer than two are. `paper` compares the mean with
    the paper's numbers. [] for a one-seed sweep."""
    import numpy as np

    from model.metrics import seed_summary
    if len(state.sweep.seeds) < 2:
        return []
    table = rows(state) if table is None else table
    points = state.sweep.points
    by_point: dict[tuple, list[Any]] = {}
    for g, r in zip(state.groups.values(), table, strict=False):
        by_point.setdefault((g.trial.dataset, g.trial.point), []).append((g, r))
    out = []
    for (dataset, point), members in by_point.items():
        done = [(g, r) for g, r in members if r["complete"]]
        summary = (seed_summary({g.trial.seed: state.group_results(g) for g, _ in done})
                   if len(done) >= 2 else None)
        si = [r["text_si"] for _, r in done if r.get("text_si") is not None]
        if summary is not None and len(si) == len(done):
            summary["text_si"] = {"mean": float(np.mean(si)), "sd": float(np.std(si, ddof=1)), "pooled": None,
                                  "per_seed": {g.trial.seed: r["text_si"] for g, r in done}}
        numbers = points[point].paper.get(dataset)
        means = {} if summary is None else {
            "f1": summary["f1"]["mean"], "acc": summary["acc"]["mean"],
            "text_si": (summary.get("text_si") or {}).get("mean"),
            "mer": {"uf1": summary["mer"]["uf1"]["mean"]} if summary["mer"] else None}
        out.append({"dataset": dataset, "point": point, "label": members[0][0].trial.point_label,
                    "seeds": [g.trial.seed for g, _ in members], "seeds_used": [g.trial.seed for g, _ in done],
                    "complete": len(done) == len(members), "summary": summary,
                    "paper": compare(means, numbers) if numbers else None})
    return out

def data_notes(state: Results) -> list[dict[str, Any]]:
    """Per prepared dataset with something to say: {dataset, data_id, skipped, dropped_subjects,
    apex_estimated, corrected, warnings}. A unit's combined training datasets (leave-one-dataset-out) say
    only what their datasets that are not listed on their own say (each note once)."""
    out, seen = [], set()
    read = {did for g in state.groups.values() for did in data_ids(g.trial)}
    for g in state.groups.values():
        for name, did in zip(g.trial.reads, data_ids(g.trial), strict=False):  # a unit reads two
            if did in seen:
                continue
            seen.add(did)
            note = state.data_note(did)
            listed = [m for m in state.sweep.members(name) if m != name and data_id(g.trial, m) in read]
            note = _without_members(note, listed) if listed else note
            if note:
                out.append({"dataset": name, "data_id": did, **note})
    return out


def _without_members(note: dict[str, list], members: list[str]) -> dict[str, list]:
    """A combined dataset's notes less those of `members` (their samples and subjects are `member:...`)."""
    mine = tuple(f"{m}:" for m in members)
    keep = {k: [x for x in v if not str(x.get("sample", "") if isinstance(x, dict) else x).startswith(mine)]
            for k, v in note.items()}
    return keep if any(keep.values()) else {}


def to_json(state: Results, trained: int, reused: int) -> dict[str, Any]:
    table = rows(state)
    return {"sweep": state.sweep.name, "trained_folds": trained, "reused_folds": reused,
            "points": table, "seed_summary": seed_summaries(state, table), "data_notes": data_notes(state)}

def write_reports(state: Results) -> dict[str, str]:
    """`<workdir>/reports/<sweep>.csv` and `.json` (atomic)."""
    import pandas as pd

    folder = state.sweep.paths.reports
    table = rows(state)
    flat = []
    for r in table:
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
    csv_path, json_path = folder / f"{state.sweep.name}.csv", folder / f"{state.sweep.name}.json"
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(json_path, json.dumps({"sweep": state.sweep.name, "points": table,
                                             "seed_summary": seed_summaries(state, table),
                                             "data_notes": data_notes(state)}, indent=1, default=_jsonable))
    return {"csv": str(csv_path), "json": str(json_path)}


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

    cols: dict[str, Any] = {"sample_id": r.sample_ids, "subject": r.subjects}
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


MIN_SUBJECTS = 5  # below this, a subject bootstrap says too little to tell two points apart
ALPHA = 0.05


def verdict(ci: list[float], p: float, subjects: int, a: str = "K", b: str = "L") -> dict[str, str]:
    """The words under a paired difference: {code, text}. code: `too_few_subjects` (fewer than
    MIN_SUBJECTS test subjects: no claim either way), `inside_noise` (the 95% CI contains 0 or p >=
    0.05), `a_better` or `b_better`."""
    if subjects < MIN_SUBJECTS:
        return {"code": "too_few_subjects",
                "text": f"too few subjects to tell: {subjects} test subject(s) (< {MIN_SUBJECTS}); a bootstrap "
                        f"over so few subjects cannot separate the two points, whatever the CI and p say"}
    if ci[0] <= 0 <= ci[1] or p >= ALPHA:
        return {"code": "inside_noise",
                "text": f"inside the noise: the 95% CI contains 0 or p >= {ALPHA}; these runs do not tell "
                        f"the two points apart"}
    hi, lo = (a, b) if ci[0] > 0 else (b, a)
    return {"code": "a_better" if ci[0] > 0 else "b_better",
            "text": f"beyond the noise: the 95% CI excludes 0 and p < {ALPHA}; {hi} scores higher than {lo} "
                    f"on these subjects"}


def compare_points(state: Results, a: int, b: int) -> list[dict[str, Any]]:
    """Point a minus point b, per (dataset, seed): pooled F1 (and ACC) difference with a subject-bootstrap
    CI, the bootstrap p-value of the F1 difference and a verdict in words (`verdict`)."""
    from model.metrics import paired_difference

    n = len(state.sweep.points)
    for k in (a, b):
        if not 0 <= k < n:
            raise ConfigError(f"{state.sweep.source}: --compare {a} {b}: points are 0..{n - 1}")
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
                    "point_a": a, "point_b": b, "diff": d["f1_diff"], "ci": d["f1_diff_ci"], "p": d["p_boot"],
                    "acc_diff": d["acc_diff"], "acc_ci": d["acc_diff_ci"], "subjects": d["n_subjects"],
                    "verdict": verdict(d["f1_diff_ci"], d["p_boot"], d["n_subjects"], ga.trial.point_label,
                                       gb.trial.point_label), "paired": d})
    return out


def plan_document(plan, cpus: int, gpus: int) -> dict[str, Any]:
    """What `microau-sweep plan` shows: datasets, points, seeds, folds total/stored/to train per (dataset,
    point, seed) and in all, resources, and a wall-time estimate from the stored folds' timings.

    cpus, gpus: what this machine offers Ray (the concurrent slots are what fits of `resources`)."""
    sweep = plan.sweep
    datasets = []
    for name, did in ((n, i) for t in plan.trials for n, i in zip(t.reads, data_ids(t), strict=False)):
        if any(d["data_id"] == did for d in datasets):
            continue
        d = plan.datasets.get(did)
        row = {"name": name, "data_id": did,
               "reader": "+".join(sweep.datasets[n].reader for n in sweep.members(name))}
        if d is not None and getattr(d, "current_key", None):
            row.update(state="changed", key=d.current_key, samples=None, subjects=len(set(d.subjects)),
                       subject_names=sorted(set(map(str, d.subjects))), recorded_key=d.key)
        elif d is not None:
            row.update(state="recorded" if did in plan.recorded else "prepared", key=d.key,
                       samples=getattr(d, "samples", None), subjects=len(set(d.subjects)),
                       subject_names=sorted(set(map(str, d.subjects))))
        elif (problem := unreachable(sweep, name)) is not None:  # `run` stops with the same message
            row.update(state="unreachable", key=None, samples=None, subjects=None, subject_names=None,
                       problem=problem)
        else:
            row.update(state="to prepare", key=None, samples=None, subjects=_subjects_without_data(sweep, name),
                       subject_names=None)
        datasets.append(row)
    by_id = {d["data_id"]: d for d in datasets}
    stored_s = {f.key: _fold_seconds(plan, f.key) for f in plan.folds if f.key in plan.stored}
    known_s = [v for v in stored_s.values() if v is not None]
    groups, seconds = [], 0.0
    for trial in plan.trials:
        folds = [f for f in plan.folds if f.trial is trial]
        info = by_id[data_ids(trial)[0]]
        if trial.cross:  # one unit; `run` trains it anew when either dataset is to prepare or changed
            fresh = {by_id[i]["state"] for i in data_ids(trial)} & {"changed", "to prepare", "unreachable"}
            total, stored = 1, 0 if fresh else sum(f.key in plan.stored for f in folds)
        elif info["state"] == "changed":  # `run` prepares the data anew: none of its folds is stored yet
            total, stored = len(folds), 0
        elif info["state"] in ("to prepare", "unreachable"):
            n = info["subjects"] if sweep.datasets[trial.dataset].subjects is None else \
                len(sweep.datasets[trial.dataset].subjects)
            total, stored = n, 0
        else:
            total, stored = len(folds), sum(f.key in plan.stored for f in folds)
        todo = None if total is None else total - stored
        mine = [stored_s[f.key] for f in folds if stored_s.get(f.key) is not None]
        same = [stored_s[f.key] for f in plan.folds if f.trial.point == trial.point
                and f.trial.dataset == trial.dataset and stored_s.get(f.key) is not None]
        mean = (sum(mine) / len(mine) if mine else sum(same) / len(same) if same
                else sum(known_s) / len(known_s) if known_s else None)
        if todo and mean is not None and seconds is not None:
            seconds += mean * todo
        elif todo:
            seconds = None
        groups.append({"dataset": trial.dataset, "point": trial.point, "label": trial.point_label,
                       "seed": trial.seed, "config_hash": trial.hash, "folds_total": total,
                       "folds_stored": stored, "folds_to_train": todo, "fold_seconds": mean})
    fits = [int(cpus // sweep.resources.cpu)] + ([int(gpus // sweep.resources.gpu)] if sweep.resources.gpu else [])
    slots = max(0, min(fits + ([sweep.max_concurrent] if sweep.max_concurrent else [])))
    counts = [g["folds_to_train"] for g in groups]
    total = {"total": _sum([g["folds_total"] for g in groups]), "stored": sum(g["folds_stored"] for g in groups),
             "to_train": _sum(counts)}
    if total["to_train"] == 0:
        estimate, basis = 0.0, "nothing to train: every fold is stored"
    elif slots == 0:
        estimate, basis = None, (f"no fold fits this machine ({cpus} CPUs, {gpus} GPUs) with resources "
                                 f"{{cpu: {sweep.resources.cpu:g}, gpu: {sweep.resources.gpu:g}}}")
    elif seconds is None or not known_s:
        estimate, basis = None, "no estimate: no fold of this sweep is stored yet (its timings are the basis)"
    else:
        estimate = seconds / slots
        basis = (f"mean stored fold time (timings.total_s) of the same point, else of the sweep, x folds to "
                 f"train / {slots} concurrent slot(s) on this machine; excludes data preparation, prefix "
                 f"computation, Ray start-up and scheduling, and assumes the stored folds ran on similar "
                 f"hardware")
    return {"sweep": sweep.name, "source": sweep.source, "workdir": str(sweep.paths.workdir),
            "datasets": datasets,
            "points": [{"index": p.index, "label": p.label, "params": p.params} for p in sweep.points],
            "seeds": list(sweep.seeds), "groups": groups, "folds": total,
            "resources": {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu,
                          "max_concurrent": sweep.max_concurrent},
            "machine": {"cpus": cpus, "gpus": gpus, "slots": slots},
            "estimate": {"seconds": estimate, "basis": basis}}


def _sum(values):
    return None if any(v is None for v in values) else sum(values)


def _fold_seconds(plan, key: str):
    try:
        return float(plan.store.result(key).timings.get("total_s"))
    except (TypeError, ValueError, AttributeError):
        return None


def _subjects_without_data(sweep, name: str):
    """How many test subjects a dataset not prepared yet has, when that is cheap to know: the sweep's
    `subjects:`, the synthetic generator's count, else the coding sheet's subjects; None otherwise. A unit's
    training datasets (one '+'-joined name): the sum of theirs."""
    members = sweep.members(name)
    if len(members) > 1:
        counts = [_subjects_without_data(sweep, n) for n in members]
        return None if None in counts else sum(counts)
    ds = sweep.datasets[name]
    if ds.subjects is not None:
        return len(ds.subjects)
    if ds.spec.synthetic is not None:
        root = ds.root
        if not (root.is_dir() and any(root.iterdir())):
            return ds.spec.synthetic.subjects
    try:
        return len({str(s.subject) for s in get_reader(ds.reader)(ds.root, sheet=ds.sheet)})
    except (MicroAUError, OSError, ValueError):
        return None
