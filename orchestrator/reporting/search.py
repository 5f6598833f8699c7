"""What `run`, `report` and `plan` show of a search sweep (`search:`): the candidates sorted by the search's
metric, complete ones first (a candidate stopped after k of N folds is shown as stopped k/N and never
ranked with the complete ones: its score is not a LOSO result), the best complete candidate as a
`variants:` entry to paste into a sweep file, and the search's plan.

The metric and CI are pooled from the results store (`SweepResults`, one group per candidate), as the
tables of a grid sweep pool them; the record of candidates (orchestrator/planning/candidates.py) gives
their status.
"""
from __future__ import annotations

from typing import Any

from orchestrator.planning.candidates import Candidates, point_of, trial_of
from orchestrator.planning.plan import Plan
from orchestrator.reporting.report import plan_document
from orchestrator.reporting.results import SweepResults
from orchestrator.spec.search import metric_of, variant_entry


def candidate_rows(results: SweepResults, candidates: Candidates) -> list[dict[str, Any]]:
    """One row per candidate: {index, label, dataset, params, status, folds_done, folds_total, complete,
    metric, value, ci (F1's), f1, acc}, complete ones first, each part sorted by the metric (best first);
    `status` is `complete` when the store holds every fold (whoever trained them), else the record's
    (`stopped`, `running`: drawn and not finished, `failed`)."""
    search = results.sweep.spec.search
    # by config: two candidates that drew the same values are one point of the store (one group)
    groups = {(g.trial.dataset, g.trial.hash): g for g in results.groups.values()}
    rows = []
    for c in candidates.items:
        g = groups.get((c.dataset, trial_of(results.sweep, c).hash))
        pooled = (g.pooled if g is not None else None) or {}
        done = g.done if g is not None else c.folds_done
        total = len(g.folds) if g is not None else c.folds_total
        complete = bool(total) and done == total
        status = "complete" if complete else ("stopped" if c.status == "complete" else c.status)
        rows.append({"index": c.index, "label": point_of(c).label, "dataset": c.dataset, "params": dict(c.params),
                     "status": status, "folds_done": done, "folds_total": total, "complete": complete,
                     "metric": search.metric, "value": metric_of(pooled, search.metric),
                     "f1": pooled.get("f1"), "acc": pooled.get("acc"), "ci": pooled.get("ci"),
                     "error": c.error})
    sign = -1 if search.mode == "max" else 1

    def order(r):
        v = r["value"]
        return (not r["complete"], -r["folds_done"] if not r["complete"] else 0,
                v is None, sign * v if v is not None else 0.0, r["index"])

    return sorted(rows, key=order)


def best(rows: list[dict[str, Any]], dataset: str | None = None) -> dict[str, Any] | None:
    """The best complete candidate (of `dataset`), None when none is complete."""
    for r in rows:
        if r["complete"] and r["value"] is not None and (dataset is None or r["dataset"] == dataset):
            return r
    return None


def paste_entry(row: dict[str, Any]) -> str:
    """The candidate as a `variants:` entry (named `search_c<K>`)."""
    return variant_entry(f"search_c{row['index']}", row["params"])


def search_document(results: SweepResults, candidates: Candidates, trained: int, reused: int) -> dict[str, Any]:
    """`run --json` / `report --json` of a search sweep: the candidates and the best complete one per
    dataset with its `variants:` entry."""
    rows = candidate_rows(results, candidates)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    bests = {d: b for d in datasets if (b := best(rows, d)) is not None}
    return {"sweep": results.sweep.name, "search": results.sweep.spec.search.model_dump(mode="json"),
            "trained_folds": trained, "reused_folds": reused, "candidates": rows,
            "best": {d: {**b, "variants": paste_entry(b)} for d, b in bests.items()}}


def print_search(console, results: SweepResults, candidates: Candidates, trained: int | None = None,
                 reused: int | None = None) -> None:
    """The candidates table per dataset and the best complete candidate as a `variants:` entry."""
    from rich.table import Table

    search = results.sweep.spec.search
    rows = candidate_rows(results, candidates)
    for d in dict.fromkeys(r["dataset"] for r in rows):
        n = sum(c.finished for c in candidates.of(d))
        t = Table(title=f"{results.sweep.name}: search on {d} ({search.algorithm}, {search.metric} "
                        f"{search.mode}; {n}/{search.num_samples} candidates finished)")
        for col in ("#", "candidate", "status", "folds", f"pooled {search.metric}", "F1 95% CI"):
            t.add_column(col, justify="right" if col in ("#", "folds") else "left")
        for r in (r for r in rows if r["dataset"] == d):
            v = "-" if r["value"] is None else f"{r['value']:.4f}"
            if not r["complete"] and r["value"] is not None:
                v += f" (after {r['folds_done']} folds)"
            ci = r["ci"] if r["complete"] else None
            ci_text = f"[{ci['f1'][0]:.3f}, {ci['f1'][1]:.3f}]" if isinstance(ci, dict) and ci.get("f1") else "-"
            status = r["status"] if r["complete"] else f"{r['status']} {r['folds_done']}/{r['folds_total'] or '?'}"
            t.add_row(str(r["index"]), r["label"], status, f"{r['folds_done']}/{r['folds_total'] or '?'}", v,
                      ci_text)
        console.print(t)
        for r in (r for r in rows if r["dataset"] == d and r["status"] in ("failed", "running")):
            why = f"failed: {r['error']}" if r["status"] == "failed" else "drawn, not finished (interrupted)"
            console.print(f"[yellow]{r['status']}[/yellow] {d} {r['label']}: {why}; run the search again to run it "
                          f"again (its {r['folds_done']} stored fold(s) are reused)", highlight=False, soft_wrap=True)
        b = best(rows, d)
        if b is None:
            console.print(f"{d}: no complete candidate yet (stopped ones are not LOSO results); run the search "
                          f"again to go on", highlight=False)
        else:
            console.print(f"{d}: best complete candidate #{b['index']} ({search.metric} {b['value']:.4f}); as a "
                          f"variant to paste into a sweep file:", highlight=False)
            console.print(paste_entry(b), highlight=False, markup=False)
    if trained is not None:
        console.print(f"trained {trained} fold(s), reused {reused} from the results store")


def search_plan(plan: Plan, candidates: Candidates, cpus: int, gpus: int) -> dict[str, Any]:
    """What `plan` says of a search sweep, per dataset searched: candidates recorded and finished, how many
    are still to draw, folds per candidate, and the most folds the search may train (every candidate still
    to run, to its last fold; early stopping trains fewer). `plan`: of the base config
    (orchestrator.planning.candidates.base_sweep); its datasets as `plan_document` describes them."""
    sweep = plan.sweep
    search = sweep.spec.search
    base = plan_document(plan, cpus=cpus, gpus=gpus)
    folds = {g["dataset"]: g["folds_total"] for g in base["groups"]}
    out = []
    for name in ([search.dataset] if search.dataset else list(sweep.spec.datasets)):
        mine = candidates.of(name)
        finished = sum(c.finished for c in mine)
        n, left = folds.get(name), max(0, search.num_samples - finished)
        out.append({"dataset": name, "num_samples": search.num_samples, "recorded": len(mine),
                    "finished": finished, "to_run": left, "folds_per_candidate": n,
                    "most_folds": None if n is None else left * n})
    return {"sweep": sweep.name, "source": sweep.source, "workdir": str(sweep.paths.workdir),
            "algorithm": search.algorithm, "metric": search.metric, "mode": search.mode,
            "space": {k: {d.kind: d.args} for k, d in search.space.items()},
            "early_stop": search.early_stop.model_dump() if search.early_stop else None,
            "max_concurrent": search.max_concurrent, "datasets": out, "data": base["datasets"],
            "resources": base["resources"], "machine": base["machine"]}
