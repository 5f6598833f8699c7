"""Terminal output with rich: the live sweep view and the final table of points."""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from rich import box
from rich.console import Console, Group as RGroup
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.state import SweepState


def _f(v: Optional[float], digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _duration(s: Optional[float]) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def ci_text(ci: Optional[Dict[str, Any]], name: str = "f1") -> str:
    """`[lo, hi]` of a pooled metric's subject-bootstrap CI (model.metrics: `ci[name] == [lo, hi]`)."""
    v = (ci or {}).get(name)
    return "-" if not v else f"[{v[0]:.3f}, {v[1]:.3f}]"


class LiveView:
    """Folds done / running / failed per point, running pooled F1, elapsed and remaining time."""

    def __init__(self, state: SweepState, console: Console):
        self.state = state
        self.console = console

    def __rich__(self):
        s = self.state
        t = Table(title=f"sweep {s.spec.name}", title_justify="left", expand=False)
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

    def __init__(self, state: SweepState, out, heartbeat_s: float = 60.0):
        self.state, self.out, self.heartbeat_s = state, out, heartbeat_s
        self.last = time.time()
        self.done = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self._lock:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.out, flush=True)
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


def points_table(rows: List[Dict[str, Any]], dataset: str) -> Table:
    """The final table of one dataset: F1, ACC (means over AUs), F1 CI, MER (UF1, UAR, ACC), TextSi
    (Table III; a column when some point has it)."""
    rows = [r for r in rows if r["dataset"] == dataset]
    has_mer = any(r.get("mer") for r in rows)
    has_si = any(r.get("text_si") is not None for r in rows)
    what = "cross-dataset" if any(r.get("protocol") == "cross_dataset" for r in rows) else "LOSO"
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


def per_au_table(rows: List[Dict[str, Any]], dataset: str) -> Table:
    """Per-AU pooled F1 of every point of one dataset."""
    rows = [r for r in rows if r["dataset"] == dataset]
    aus: List[str] = []
    for r in rows:
        for au in (r.get("per_au") or {}):
            if str(au) not in aus:
                aus.append(str(au))
    t = Table(title=f"{dataset}: pooled F1 per AU", title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("#", justify="right")
    for au in aus:
        t.add_column(f"AU{au}", justify="right", no_wrap=True)
    for r in rows:
        per_au = r.get("per_au") or {}
        t.add_row(str(r["point"]), *[_f(_lookup(per_au, au).get("f1")) for au in aus],
                  style="" if r["complete"] else "yellow")
    return t


def _lookup(per_au: Dict[Any, Any], au: str) -> Dict[str, Any]:
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


def print_report(console: Console, rows: List[Dict[str, Any]], trained: Optional[int] = None,
                 reused: Optional[int] = None, paths: Optional[Dict[str, str]] = None,
                 notes: Optional[List[Dict[str, Any]]] = None) -> None:
    """The tables of every dataset, failed and incomplete points, and the notes on each prepared dataset
    (SweepState.data_notes: skipped samples, dropped subjects, estimated apexes, corrections, warnings)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for d in datasets:
        console.print(points_table(rows, d))
        console.print(per_au_table(rows, d))
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
        for w in d.get("warnings") or []:
            console.print(f"[yellow]warning[/yellow] {w['warning']}", highlight=False, soft_wrap=True,
                          markup=False)
    if trained is not None:
        console.print(f"trained {trained} fold(s), reused {reused} from the results store")
    if paths:
        console.print(f"table written to {paths['csv']} and {paths['json']}")
