"""`report --format md|latex|csv|json`: a sweep's table in the layout of the paper's tables.

One row per point; per dataset of the sweep a group of columns: F1 and ACC (pooled over the LOSO folds,
mean over AUs), next to each the paper's number where the sweep file gives one (`paper:`,
orchestrator/spec/paper.py), the paper's other metrics where it gives them (Table III TextSi, Table X MER F1),
and with `--per-au` the pooled F1 of every AU. A point run with several seeds shows the mean ± sample sd
over its seeds (the table and the CSV/JSON also carry the F1/ACC pooled over all seeds). It reads the
rows of orchestrator/reporting/report.py and writes nothing itself.
"""
from __future__ import annotations

import io
import json
from typing import Any

from orchestrator.reporting.report import rows, seed_summaries
from orchestrator.reporting.results import SweepResults
from orchestrator.spec.paper import MEASURED

FORMATS = ("md", "latex", "csv", "json")
_BASE = ("f1", "acc")


def document(state: SweepResults, per_au: bool = False) -> dict[str, Any]:
    """The table as data: {sweep, datasets, metrics, paper_metrics, seeds, per_au, rows}; each row is
    {point, label, datasets: {name: {complete, folds, <metric>, <metric>_sd, <metric>_pooled, paper:
    {metric: value}, diff: {metric: measured - paper}, per_au: {AU: F1}, per_au_sd}}}. With one seed the
    `_sd`/`_pooled` values are None; with several, <metric> is the mean over the seeds whose folds are all
    finished."""
    sweep = state.sweep
    table = rows(state)
    summaries = {(s["dataset"], s["point"]): s for s in seed_summaries(state, table)}
    points = sweep.points
    datasets = list(sweep.datasets)
    paper_metrics = [m for m in MEASURED if any(m in p.paper.get(d, {}) for p in points for d in datasets)]
    metrics = list(_BASE) + [m for m in paper_metrics if m not in _BASE]
    multi = len(sweep.seeds) > 1
    by = {}
    for r in table:
        by.setdefault((r["dataset"], r["point"]), []).append(r)
    out_rows = []
    for p in points:
        cells = {}
        for d in datasets:
            members = by.get((d, p.index), [])
            if not members:
                continue
            cell: dict[str, Any] = {"complete": all(r["complete"] for r in members),
                                    "folds": f"{sum(r['folds_done'] for r in members)}/"
                                             f"{sum(r['folds_total'] for r in members)}"}
            s = (summaries.get((d, p.index)) or {}).get("summary") if multi else None
            for m in metrics:
                if multi:
                    stats = _summary_stats(s, m)
                    cell[m], cell[f"{m}_sd"], cell[f"{m}_pooled"] = (stats.get(k) for k in ("mean", "sd", "pooled"))
                else:
                    cell[m], cell[f"{m}_sd"], cell[f"{m}_pooled"] = MEASURED[m][1](members[0]), None, None
            cell["paper"] = dict(p.paper.get(d, {}))
            cell["diff"] = {m: (None if cell.get(m) is None else cell[m] - v) for m, v in cell["paper"].items()}
            if per_au:
                if multi:
                    pa = (s or {}).get("per_au") or {}
                    cell["per_au"] = {str(a): v["f1"]["mean"] for a, v in pa.items()}
                    cell["per_au_sd"] = {str(a): v["f1"]["sd"] for a, v in pa.items()}
                else:
                    cell["per_au"] = {str(a): v["f1"] for a, v in (members[0].get("per_au") or {}).items()}
                    cell["per_au_sd"] = None
            cells[d] = cell
        out_rows.append({"point": p.index, "label": p.label, "datasets": cells})
    aus = {d: list(dict.fromkeys(a for r in out_rows for a in (r["datasets"].get(d, {}).get("per_au") or {})))
           for d in datasets} if per_au else {}
    return {"sweep": sweep.name, "layout": "one row per point; per dataset F1 and ACC pooled over the LOSO "
                                          "folds (mean over AUs)", "datasets": datasets, "metrics": metrics,
            "paper_metrics": paper_metrics, "seeds": list(sweep.seeds),
            "seed_statistic": "mean and sample sd (ddof=1) over seeds" if multi else None,
            "per_au": aus, "rows": out_rows}


def _summary_stats(summary: dict[str, Any] | None, metric: str) -> dict[str, Any]:
    if not summary:
        return {}
    if metric == "mer_f1":
        return (summary.get("mer") or {}).get("uf1") or {}
    return summary.get(metric) or {}


def render(doc: dict[str, Any], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    return {"md": markdown, "latex": latex, "csv": csv, "json": to_json}[fmt](doc)


# -- columns ------------------------------------------------------------------------------------------------
def _columns(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The value columns, dataset by dataset: {dataset, key, heading, kind} with kind measured | paper |
    au."""
    cols = []
    for d in doc["datasets"]:
        for m in doc["metrics"]:
            cols.append({"dataset": d, "key": m, "heading": MEASURED[m][0], "kind": "measured"})
            if any(m in r["datasets"].get(d, {}).get("paper", {}) for r in doc["rows"]):
                cols.append({"dataset": d, "key": m, "heading": f"{MEASURED[m][0]} (paper)", "kind": "paper"})
        for a in doc["per_au"].get(d, []):
            cols.append({"dataset": d, "key": a, "heading": f"AU{a}", "kind": "au"})
    return cols


def _text(cell: dict[str, Any] | None, col: dict[str, Any], pm: str = "±") -> str:
    if cell is None:
        return "-"
    if col["kind"] == "paper":
        v, sd = cell["paper"].get(col["key"]), None
    elif col["kind"] == "au":
        v = (cell.get("per_au") or {}).get(col["key"])
        sd = (cell.get("per_au_sd") or {}).get(col["key"])
    else:
        v, sd = cell.get(col["key"]), cell.get(f"{col['key']}_sd")
    if v is None:
        return "-"
    return f"{v:.3f}" if sd is None else f"{v:.3f} {pm} {sd:.3f}"


def _label(row: dict[str, Any]) -> str:
    bad = [f"{d} {c['folds']} folds" for d, c in row["datasets"].items() if not c["complete"]]
    return row["label"] + (f" (incomplete: {', '.join(bad)})" if bad else "")


def _notes(doc: dict[str, Any]) -> list[str]:
    notes = []
    if doc["seed_statistic"]:
        notes.append(f"Seeds {', '.join(map(str, doc['seeds']))}: mean ± sample sd over the seeds whose folds "
                     f"are all finished.")
    if "mer_f1" in doc["metrics"]:
        notes.append("MER F1 (UF1): the paper's Table X F1 next to this tool's macro F1 (UF1) over the MER "
                     "classes present.")
    return notes


# -- formats ------------------------------------------------------------------------------------------------
def markdown(doc: dict[str, Any]) -> str:
    cols = _columns(doc)

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("|", "\\|")

    lines = ["| # | point | " + " | ".join(esc(f"{c['dataset']} {c['heading']}") for c in cols) + " |",
             "|---:|---|" + "---:|" * len(cols)]
    for r in doc["rows"]:
        lines.append(f"| {r['point']} | {esc(_label(r))} | " +
                     " | ".join(_text(r["datasets"].get(c["dataset"]), c) for c in cols) + " |")
    notes = _notes(doc)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in s)


def latex(doc: dict[str, Any]) -> str:
    """A booktabs tabular as the paper's tables: a header row of datasets spanning their columns, a row
    of metric names, one row per point."""
    cols = _columns(doc)
    spans: list[list[Any]] = []
    for c in cols:
        if spans and spans[-1][0] == c["dataset"]:
            spans[-1][1] += 1
        else:
            spans.append([c["dataset"], 1])
    out = [r"\begin{tabular}{rl" + "c" * len(cols) + "}", r"\toprule"]
    out.append(" & & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(d)}}}" for d, n in spans) + r" \\")
    start, rules = 3, []
    for _, n in spans:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    out.append(" ".join(rules))
    out.append(r"\# & Point & " + " & ".join(latex_escape(c["heading"]) for c in cols) + r" \\")
    out.append(r"\midrule")
    for r in doc["rows"]:
        cells = [_text(r["datasets"].get(c["dataset"]), c, pm="$\\pm$") for c in cols]
        out.append(f"{r['point']} & {latex_escape(_label(r))} & " + " & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    out += [f"% {latex_escape(n)}" for n in _notes(doc)]
    return "\n".join(out) + "\n"


def _flat(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat dict per point: `<dataset>_<metric>` (and `_sd`, `_pooled` with several seeds,
    `_paper`, `_diff` where the paper gives it), `<dataset>_AU<n>_f1`, `<dataset>_complete`."""
    multi = bool(doc["seed_statistic"])
    out = []
    for r in doc["rows"]:
        flat: dict[str, Any] = {"point": r["point"], "label": r["label"]}
        for d in doc["datasets"]:
            c = r["datasets"].get(d) or {}
            for m in doc["metrics"]:
                flat[f"{d}_{m}"] = c.get(m)
                if multi:
                    flat[f"{d}_{m}_sd"], flat[f"{d}_{m}_pooled"] = c.get(f"{m}_sd"), c.get(f"{m}_pooled")
                if any(m in (x["datasets"].get(d) or {}).get("paper", {}) for x in doc["rows"]):
                    flat[f"{d}_{m}_paper"] = (c.get("paper") or {}).get(m)
                    flat[f"{d}_{m}_diff"] = (c.get("diff") or {}).get(m)
            for a in doc["per_au"].get(d, []):
                flat[f"{d}_AU{a}_f1"] = (c.get("per_au") or {}).get(a)
                if multi:
                    flat[f"{d}_AU{a}_f1_sd"] = (c.get("per_au_sd") or {}).get(a)
            flat[f"{d}_complete"] = c.get("complete")
            flat[f"{d}_folds"] = c.get("folds")
        out.append(flat)
    return out


def csv(doc: dict[str, Any]) -> str:
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(_flat(doc)).to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1) + "\n"
