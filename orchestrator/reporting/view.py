"""Terminal output with rich: the live sweep view and the final table of points."""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Protocol

from rich import box
from rich.console import Console
from rich.console import Group as RGroup
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from orchestrator.reporting.report import MIN_SUBJECTS
from orchestrator.spec.paper import MEASURED

MAX_WARNINGS = 10  # data warnings printed per dataset after a table; the report's JSON holds them all


class LiveProgress(Protocol):
    """What the live views read of a running sweep (orchestrator.execution.state.SweepState provides it)."""
    sweep: Any
    groups: dict[str, Any]
    folds: dict[str, Any]
    epochs: dict[str, int]
    errors: dict[str, str]
    listeners: list[Any]
    trained: int
    todo: list[str]

    def elapsed(self) -> float: ...

    def remaining(self) -> float | None: ...


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def ci_text(ci: dict[str, Any] | None, name: str = "f1") -> str:
    """`[lo, hi]` of a pooled metric's subject-bootstrap CI (model.metrics: `ci[name] == [lo, hi]`)."""
    v = (ci or {}).get(name)
    return "-" if not v else f"[{v[0]:.3f}, {v[1]:.3f}]"


class LiveView:
    """Folds done / running / failed per point, running pooled F1, elapsed and remaining time."""

    def __init__(self, state: LiveProgress, console: Console):
        self.state = state
        self.console = console

    def __rich__(self):
        s = self.state
        t = Table(title=f"sweep {s.sweep.name}", title_justify="left", expand=False)
        for col in ("dataset", "point", "seed", "done", "running", "failed", "total", "F1 so far"):
            t.add_column(col, justify="right" if col not in ("dataset", "point") else "left")
        # rendered by rich's refresh thread while the driver's callback updates the state: copy first
        running = []
        for g in list(s.groups.values()):
            pooled, now, failed = g.pooled, list(g.running), len(g.failed)
            running += now
            t.add_row(g.trial.dataset, g.trial.point_label, str(g.trial.seed), str(g.done), str(len(now)),
                      Text(str(failed), style="red" if failed else ""), str(len(g.folds)),
                      _f(pooled.get("f1") if pooled else None))
        epochs = ", ".join(f"{s.folds[k].subject}@{s.epochs.get(k, 0)}" for k in running[:8])
        footer = Text(f"trained {s.trained}/{len(s.todo)} this run  elapsed {_duration(s.elapsed())}  "
                      f"remaining ~{_duration(s.remaining())}" + (f"  running: {epochs}" if epochs else ""))
        return RGroup(t, footer)

    def __call__(self):
        return Live(self, console=self.console, refresh_per_second=2, transient=False)


def live_view(console: Console):
    """`view` argument of run_sweep: a context manager showing the state live."""
    return lambda state: LiveView(state, console)()


class LogLines:
    """Progress for logs (nohup, batch jobs, `| tee`): one plain line per finished or failed fold, and a
    heartbeat line while folds run when nothing was printed for `heartbeat_s` seconds."""

    def __init__(self, state: LiveProgress, out, heartbeat_s: float = 60.0):
        self.state, self.out, self.heartbeat_s = state, out, heartbeat_s
        self.last = time.time()
        self.done = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self._lock:
            self.out.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
            self.out.flush()
            self.last = time.time()

    def on_event(self, event: str, key: str) -> None:
        s = self.state
        f = s.folds[key]
        g = s.groups[f.group]
        self.done += 1
        where = f"{f.trial.dataset} {f.trial.point_label} seed {f.trial.seed} subject {f.subject}"
        k = f"{self.done}/{len(s.todo)}"
        if event == "failed":
            self._print(f"fold {k} FAILED  {where}: {s.errors.get(key, '?')}")
            return
        from model.metrics import pooled_metrics

        fold_f1 = pooled_metrics([s.result(key)], n_boot=1)["f1"]
        point = _f((g.pooled or {}).get("f1"))
        self._print(f"fold {k} done  {where}  fold F1 {fold_f1:.3f}  point F1 so far {point} "
                    f"({g.done}/{len(g.folds)} folds)  ETA {_duration(s.remaining())}")

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(5.0, self.heartbeat_s)):
            if time.time() - self.last < self.heartbeat_s:
                continue
            s = self.state
            running = [k for g in list(s.groups.values()) for k in list(g.running)]
            epochs = ", ".join(f"{s.folds[k].trial.dataset} {s.folds[k].subject}@epoch {s.epochs.get(k, 0)}"
                               for k in running[:6])
            self._print(f"running {len(running)} fold(s){': ' + epochs if epochs else ''}; {self.done}/"
                        f"{len(s.todo)} finished this run; elapsed {_duration(s.elapsed())}, "
                        f"ETA {_duration(s.remaining())}")

    @contextlib.contextmanager
    def __call__(self):
        self.state.listeners.append(self.on_event)
        beat = threading.Thread(target=self._heartbeat, name="microau-heartbeat", daemon=True)
        beat.start()
        try:
            yield self
        finally:
            self._stop.set()
            beat.join(timeout=10)
            self.state.listeners.remove(self.on_event)


def log_view(out, heartbeat_s: float = 60.0):
    """`view` argument of run_sweep for a stream that is not a terminal: plain progress lines."""
    return lambda state: LogLines(state, out, heartbeat_s)()


def _pm(stats: dict[str, Any] | None) -> str:
    """`mean ± sd` of a seed summary's statistic (model.metrics.seed_summary)."""
    return "-" if not stats else f"{stats['mean']:.3f} ± {stats['sd']:.3f}"


def _with_summaries(rows: list[dict[str, Any]], summaries: list[dict[str, Any]]):
    """The rows in order, each point's seed summary (report.seed_summaries) right after its last seed:
    (kind, dict) with kind `seed` or `summary`."""
    last = {}
    for i, r in enumerate(rows):
        last[(r["dataset"], r["point"])] = i
    after = {last[(s["dataset"], s["point"])]: s for s in summaries if (s["dataset"], s["point"]) in last}
    for i, r in enumerate(rows):
        yield "seed", r
        if i in after:
            yield "summary", after[i]


def points_table(rows: list[dict[str, Any]], dataset: str) -> Table:
    """The final table of one dataset: F1, ACC (means over AUs), F1 CI, MER (UF1, UAR, ACC), TextSi
    (Table III; a column when some point has it)."""
    rows = [r for r in rows if r["dataset"] == dataset]
    has_mer = any(r.get("mer") for r in rows)
    has_si = any(r.get("text_si") is not None for r in rows)
    names = {"cross_dataset": "cross-dataset", "lodo": "leave-one-dataset-out"}
    what = next((names[r["protocol"]] for r in rows if r.get("protocol") in names), "LOSO")
    t = Table(title=f"{dataset}: pooled {what} metrics (F1/ACC = mean over AUs)", title_justify="left",
              box=box.SIMPLE_HEAD)
    for col in ["#", "point", "seed", "folds", "F1", "ACC", "F1 95% CI"] + (
            ["MER UF1", "MER UAR", "MER ACC"] if has_mer else []) + (["TextSi"] if has_si else []):
        t.add_column(col, justify="left" if col == "point" else "right", no_wrap=True)
    for r in rows:
        folds = f"{r['folds_done']}/{r['folds_total']}" + ("" if r["complete"] else " incomplete")
        cells = [str(r["point"]), r["label"], str(r["seed"]), folds, _f(r.get("f1")), _f(r.get("acc")),
                 ci_text(r.get("ci"))]
        if has_mer:
            m = r.get("mer") or {}
            cells += [_f(m.get("uf1")), _f(m.get("uar")), _f(m.get("acc"))]
        if has_si:
            cells.append(_f(r.get("text_si")))
        t.add_row(*cells, style="" if r["complete"] else "yellow")
    return t


def seeds_table(summaries: list[dict[str, Any]], dataset: str) -> Table | None:
    """One row per point run with several seeds (report.seed_summaries): mean ± sd over its seeds of the
    pooled F1, ACC (and MER UF1, TextSi where there), and F1/ACC pooled over all seeds; None for a
    one-seed sweep."""
    summaries = [s for s in summaries or [] if s["dataset"] == dataset]
    if not summaries:
        return None
    stats = [x["summary"] or {} for x in summaries]
    has_mer = any(s.get("mer") for s in stats)
    has_si = any(s.get("text_si") for s in stats)
    t = Table(title=f"{dataset}: over seeds (mean ± sample sd of each seed's pooled metric; 'pooled': every "
                    f"seed's predictions pooled)", title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("#", justify="right")
    t.add_column("point")  # may wrap: the numbers may not
    for col in ["seeds", "F1 mean ± sd", "ACC mean ± sd", "F1 pooled", "ACC pooled"] + (
            ["MER UF1 mean ± sd"] if has_mer else []) + (["TextSi mean ± sd"] if has_si else []):
        t.add_column(col, justify="right", no_wrap=col != "seeds")
    for x, s in zip(summaries, stats, strict=False):
        seeds = ",".join(map(str, x["seeds_used"])) + ("" if x["complete"] else
                                                       f" of {','.join(map(str, x['seeds']))}")
        cells = [str(x["point"]), x["label"], seeds, _pm(s.get("f1")), _pm(s.get("acc")),
                 _f((s.get("f1") or {}).get("pooled")), _f((s.get("acc") or {}).get("pooled"))]
        cells += [_pm((s.get("mer") or {}).get("uf1"))] if has_mer else []
        cells += [_pm(s.get("text_si"))] if has_si else []
        t.add_row(*cells, style="" if x["complete"] else "yellow")
    return t


def paper_table(rows: list[dict[str, Any]], dataset: str,
                summaries: list[dict[str, Any]] | None = None) -> Table | None:
    """Measured next to the paper's numbers (sweep file `paper:`), with the difference measured - paper,
    for the points of one dataset that have them; None when none has. A multi-seed point is compared by
    the mean over its seeds (one extra row)."""
    rows = [r for r in rows if r["dataset"] == dataset]
    summaries = [s for s in summaries or [] if s["dataset"] == dataset]
    metrics = [m for m in MEASURED if any(m in (r.get("paper") or {}) for r in rows)]
    if not metrics:
        return None
    title = f"{dataset}: measured vs the paper (difference = measured - paper)"
    if "mer_f1" in metrics:
        title += "; MER F1: the paper's Table X F1 vs the measured MER UF1"
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for col in ["#", "point", "seed"]:
        t.add_column(col, justify="left" if col == "point" else "right", no_wrap=True)
    for m in metrics:
        name = MEASURED[m][0].split(" (")[0]  # MER F1 (UF1) -> MER F1: the title says what is compared
        for col in (name, f"{name} paper", f"{name} diff"):
            t.add_column(col, justify="right", no_wrap=True)
    for kind, r in _with_summaries(rows, summaries):
        paper = r.get("paper")
        if not paper:
            continue
        seed = "mean" if kind == "summary" else str(r["seed"])
        cells = [str(r["point"]), r["label"], seed]
        for m in metrics:
            c = paper.get(m)
            cells += ["", "", ""] if c is None else [
                _f(c["measured"]), _f(c["paper"]), "-" if c["diff"] is None else f"{c['diff']:+.3f}"]
        complete = r["complete"]
        t.add_row(*cells, style=("bold" if kind == "summary" else "") if complete else "yellow")
    return t


def per_au_table(rows: list[dict[str, Any]], dataset: str,
                 summaries: list[dict[str, Any]] | None = None) -> Table:
    """Per-AU pooled F1 of every (point, seed) of one dataset, and for a point with several seeds the mean
    and the sample sd over them (two rows)."""
    rows = [r for r in rows if r["dataset"] == dataset]
    summaries = [s for s in summaries or [] if s["dataset"] == dataset]
    aus: list[str] = []
    for r in rows:
        for au in (r.get("per_au") or {}):
            if str(au) not in aus:
                aus.append(str(au))
    t = Table(title=f"{dataset}: pooled F1 per AU", title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("#", justify="right")
    t.add_column("seed", justify="right", no_wrap=True)
    for au in aus:
        t.add_column(f"AU{au}", justify="right", no_wrap=True)
    for kind, r in _with_summaries(rows, summaries):
        if kind == "summary":  # two compact rows (mean, sd): eight AUs of "0.000 ± 0.000" would not fit
            per_au = (r["summary"] or {}).get("per_au") or {}
            for stat in ("mean", "sd"):
                t.add_row(str(r["point"]), f"{stat} of {len(r['seeds_used'])}",
                          *[_f((_lookup(per_au, au).get("f1") or {}).get(stat)) for au in aus], style="bold",
                          end_section=stat == "sd")
            continue
        per_au = r.get("per_au") or {}
        t.add_row(str(r["point"]), str(r["seed"]), *[_f(_lookup(per_au, au).get("f1")) for au in aus],
                  style="" if r["complete"] else "yellow")
    return t


def _lookup(per_au: dict[Any, Any], au: str) -> dict[str, Any]:
    for k, v in per_au.items():
        if str(k) == au:
            return v or {}
    return {}


def console(stderr: bool = False) -> Console:
    """A rich console on the process's stdout (or stderr) as it is now (so Tune's own prints, which
    `run` sends to the workdir's log, do not take it along); 120 columns when the output is not a
    terminal (logs, pipes) so tables stay whole."""
    stream = sys.stderr if stderr else sys.stdout
    c = Console(file=stream)
    return c if c.is_terminal else Console(file=stream, width=max(c.width, 120))


def print_report(console: Console, rows: list[dict[str, Any]], trained: int | None = None,
                 reused: int | None = None, paths: dict[str, str] | None = None,
                 notes: list[dict[str, Any]] | None = None,
                 summaries: list[dict[str, Any]] | None = None) -> None:
    """The tables of every dataset (with the seed summaries of report.seed_summaries and, where the
    sweep file gives the paper's numbers, measured vs paper), failed and incomplete points, and the notes
    on each prepared dataset (SweepState.data_notes: skipped samples, dropped subjects, estimated apexes,
    corrections, warnings)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for d in datasets:
        console.print(points_table(rows, d))
        seeds = seeds_table(summaries or [], d)
        if seeds is not None:
            console.print(seeds)
        console.print(per_au_table(rows, d, summaries))
        paper = paper_table(rows, d, summaries)
        if paper is not None:
            console.print(paper)
        few = sorted({r["folds_done"] for r in rows if r["dataset"] == d and 0 < r["folds_done"] < MIN_SUBJECTS})
        if few:
            console.print(f"[yellow]few subjects[/yellow] {d}: the F1 95% CIs rest on {'/'.join(map(str, few))} "
                          f"test subject(s) (< {MIN_SUBJECTS}): too few subjects to tell points apart; read "
                          f"them as a rough range", highlight=False, soft_wrap=True)
    for r in rows:
        for f in r["failed"]:
            console.print(f"[red]failed[/red] {r['dataset']} {r['label']} seed {r['seed']} subject "
                          f"{f['subject']}: {f['error']}")
        if not r["complete"] and not r["failed"]:
            console.print(f"[yellow]incomplete[/yellow] {r['dataset']} {r['label']} seed {r['seed']}: "
                          f"{r['folds_done']}/{r['folds_total']} folds; run the sweep again to finish it")
    for d in notes or []:
        if d["skipped"]:
            console.print(f"[yellow]skipped[/yellow] {d['dataset']}: {len(d['skipped'])} sample(s) left out "
                          f"(on_error: skip); the metrics above do not include them:", highlight=False,
                          soft_wrap=True)
        for s in d["skipped"]:
            console.print(f"  {s['reason']}", highlight=False, markup=False, soft_wrap=True)
        if d["dropped_subjects"]:
            console.print(f"[yellow]dropped[/yellow] {d['dataset']}: subject(s) "
                          f"{', '.join(d['dropped_subjects'])} have no usable sample and are not in LOSO",
                          highlight=False, soft_wrap=True)
        if d.get("apex_estimated"):
            console.print(f"[yellow]apex estimated[/yellow] {d['dataset']}: the sheet gives no apex frame for "
                          f"{len(d['apex_estimated'])} sample(s); the frame of largest motion was used: " +
                          ", ".join(f"{a['sample']} ({a['apex']})" for a in d["apex_estimated"]),
                          highlight=False, soft_wrap=True)
        if d.get("corrected"):
            console.print(f"corrected {d['dataset']}: " + ", ".join(
                f"{c['sample']} ({', '.join(c.get('fields', {}))})" for c in d["corrected"]),
                highlight=False, soft_wrap=True)
        warnings = d.get("warnings") or []
        for w in warnings[:MAX_WARNINGS]:
            console.print(f"[yellow]warning[/yellow] {escape(w['warning'])}", highlight=False, soft_wrap=True)
        if len(warnings) > MAX_WARNINGS:
            console.print(f"[yellow]warning[/yellow] {d['dataset']}: ... and {len(warnings) - MAX_WARNINGS} more "
                          f"(every one is under data_notes in the report's JSON)", highlight=False, soft_wrap=True)
    if trained is not None:
        console.print(f"trained {trained} fold(s), reused {reused} from the results store")
    if paths:
        console.print(f"table written to {paths['csv']} and {paths['json']}")
