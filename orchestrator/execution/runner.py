"""`microau-sweep run`: the Ray Tune LOSO sweep.

Driver: prepare each dataset once, compute each frozen prefix once, put both in the object store
(`tune.with_parameters`), schedule one Tune trial per fold not yet in the results store with
`tune.with_resources`, and own all tracking (results store, MLflow, live view) in a driver-side
`tune.Callback`. Trials only train and `tune.report` a `FinishedFold` (orchestrator/execution/jobs.py).

Where folds run is a `Backend`: `RayTuneBackend` here; tests give `run_sweep` their own (one that trains
in-process, or one that fakes training) through the same interface.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator.execution.jobs import RESULT_KEY, FinishedFold, FoldJob
from orchestrator.execution.parallel import RaySamples
from orchestrator.execution.ray_session import RaySession, check_resources
from orchestrator.execution.state import SweepState, open_tracker
from orchestrator.execution.trainable import fold_trainable, named_trainable, prefix_for, prefix_group, stackable
from orchestrator.planning.data import data_ids, prepare_all, record_prepared
from orchestrator.planning.lock import WorkdirLock
from orchestrator.planning.plan import Fold, make_plan
from orchestrator.planning.store import ResultsStore, claim_name, ensure_writable
from orchestrator.spec.resolved import Sweep
from orchestrator.spec.schema import TrialConfig

logger = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    state: SweepState
    trained: int = 0
    reused: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # fold key -> error
    timings: dict[str, Any] = field(default_factory=dict)  # RunTimings.summary(): where the wall time went


class RunTimings:
    """Where a run's wall time goes: the sweep's phases (seconds each) and, per trained fold, the driver's
    view (trial start -> its result stored and tracked) against the worker's (entering the trainable,
    first imports, the fold's own `total_s`, reporting). `run --json` prints `summary()` as `timings`;
    bench/overhead.py reads it."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.trials: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t

    def trial(self, key: str) -> dict[str, float]:
        return self.trials.setdefault(key, {})

    def summary(self) -> dict[str, Any]:
        trials = []
        for key, t in self.trials.items():
            row = {"fold": key, **{k: round(v, 4) for k, v in t.items() if k not in ("start", "end")}}
            if "start" in t and "end" in t:
                row["wall_s"] = round(t["end"] - t["start"], 4)
                if "entered" in t:  # trial start on the driver -> the trainable entered (same clock locally)
                    row["to_trainable_s"] = round(t["entered"] - t["start"], 4)
                if "fold_s" in t:
                    row["fixed_s"] = round(row["wall_s"] - t["fold_s"], 4)
            trials.append(row)
        ended = sorted((t["start"], t["end"]) for t in self.trials.values() if "start" in t and "end" in t)
        # one trial's end -> the next start
        gaps = [round(b[0] - a[1], 4) for a, b in zip(ended, ended[1:], strict=False)]
        return {"total_s": round(time.perf_counter() - self.t0, 3), "gaps_between_trials_s": gaps,
                "phases": {k: round(v, 3) for k, v in self.phases.items()}, "trials": trials}


# ------------------------------------------------------------------------------------------------------
# where folds run
@dataclass(frozen=True)
class FoldInputs:
    """What the folds to train read besides their jobs: the frozen prefixes by group, and the jobs by fold
    key."""
    prefixes: dict[str, Any]
    jobs: dict[str, FoldJob]


class Backend(Protocol):
    """Where a sweep's folds run. `run_sweep` calls, in order: `prepare` (every dataset the trials read,
    by data id), then, when there are folds to train, `start` (bring the compute up and check it can run
    one fold; in parallel with `inputs`), `inputs`, `run` (train `todo`, sending each fold's events to
    `state`: started, progress, finished, retrying, failed), and always `close`."""

    def prepare(self, sweep: Sweep, trials: Sequence[TrialConfig]) -> dict[str, Any]: ...

    def start(self) -> None: ...

    def inputs(self, sweep: Sweep, todo: list[Fold], datasets: dict[str, Any]) -> FoldInputs: ...

    def run(self, sweep: Sweep, todo: list[Fold], inputs: FoldInputs, datasets: dict[str, Any],
            state: SweepState, timings: RunTimings) -> None: ...

    def close(self) -> None: ...


class RayTuneBackend:
    """Folds as Ray Tune trials on an embedded Ray or the cluster at `address`; samples prepared as Ray
    tasks on the same Ray (started only when there is something to prepare or train)."""

    def __init__(self, sweep: Sweep, address: str | None = None, *, quiet: bool = False, progress: bool = True,
                 dashboard: bool = False):
        self.sweep, self.address, self.progress = sweep, address, progress
        dashboard = dashboard or sweep.dashboard
        self.session = RaySession(sweep, address, dashboard=dashboard)
        self.reuse_workers = True  # decided once Ray is up (start)

    def prepare(self, sweep: Sweep, trials: Sequence[TrialConfig]) -> dict[str, Any]:
        return prepare_all(sweep, trials, progress=self.progress, map_samples=RaySamples(self.session))

    def start(self) -> None:
        self.session()
        check_resources(self.sweep, self.address)
        # Ray names an actor once, when it creates it: where a dashboard shows the actors (ours, or the
        # cluster's), each fold gets an actor of its own, named by its fold; else a worker process trains
        # fold after fold (no new process, no second import of torch per fold)
        self.reuse_workers = not self.session.dashboard_url

    def inputs(self, sweep: Sweep, todo: list[Fold], datasets: dict[str, Any]) -> FoldInputs:
        return fold_inputs(sweep, todo, datasets)

    def run(self, sweep: Sweep, todo: list[Fold], inputs: FoldInputs, datasets: dict[str, Any],
            state: SweepState, timings: RunTimings) -> None:
        tuner = _tuner(sweep, todo, inputs, datasets, state, timings, reuse_workers=self.reuse_workers)
        with _tune_interrupt_notice(sweep), _stdout_to(sweep.paths.logs / "tune.log"):
            tuner.fit()

    def close(self) -> None:
        self.session.close()


def run_sweep(sweep: Sweep, address: str | None = None, *, quiet: bool = False,
              progress: bool = True, view: Callable[[SweepState], Any] | None = None,
              dashboard: bool = False, share_name: bool = False, backend: Backend | None = None,
              figures: bool = True) -> RunOutcome:
    """Run every fold of the sweep not yet in the results store; return the updated state.

    `view(state)` is a context manager for a live display (rich) or None. Holds `<workdir>/run.lock`
    throughout (orchestrator.planning.lock); raises LockError when another run holds it. `share_name`: see
    orchestrator.planning.store.claim_name. `backend`: where folds run (default: RayTuneBackend).
    `figures`: draw the figures of the points that are complete and new on their MLflow parents at the end
    (`run --no-figures`: not; `report --figures` draws them from the store at any time).
    """
    ensure_writable(sweep.paths.workdir, "workdir", "nothing could be stored")
    # One run per workdir, taken before data, tracking or scheduling: a second run stops here (LockError)
    with WorkdirLock(sweep.paths.lock, sweep=str(Path(sweep.source).resolve()) if sweep.source else sweep.name):
        claim_name(sweep, share=share_name)  # one sweep file per name in a workdir
        backend = backend or RayTuneBackend(sweep, address, quiet=quiet, progress=progress, dashboard=dashboard)
        return _run_locked(sweep, backend, view=view, figures=figures)


def _run_locked(sweep: Sweep, backend: Backend, view: Callable[[SweepState], Any] | None,
                figures: bool = True) -> RunOutcome:
    store = ResultsStore(sweep.paths.results)
    store.check_writable()  # before any work: a fold that cannot be stored is a fold lost
    ensure_writable(sweep.paths.reports, "reports folder", "the table could not be written at the end")
    timings = RunTimings()
    phase = timings.phase
    drawing = None
    try:
        with phase("prepare_s"):
            datasets = backend.prepare(sweep, sweep.trials)
            record_prepared(sweep, datasets)
        with phase("plan_s"):
            plan = make_plan(sweep, datasets, store=store)  # damaged records are set aside, retrained
        todo = plan.todo
        # The driver's frozen prefixes (and its first import of torch and the model) are computed in a
        # thread, and MLflow's store and experiment are opened in another, while Ray starts: none needs the
        # others. Runs are created only after the resources are checked (no run is tracked for a sweep
        # that cannot run)
        pool = ThreadPoolExecutor(2, thread_name_prefix="setup") if todo else None
        tracker = None
        try:
            if todo:
                started = time.perf_counter()
                inputs_job = pool.submit(_timed, backend.inputs, sweep, todo, datasets)
                tracker_job = pool.submit(_timed, open_tracker, sweep)
                with phase("ray_start_s"):  # resources are checked before anything is tracked or scheduled
                    backend.start()
                with phase("tracking_open_wait_s"):
                    tracker, timings.phases["tracking_open_s"] = tracker_job.result()
            with phase("tracking_start_s"):
                state = SweepState(plan, tracking=True, tracker=tracker)  # MLflow parent runs
                state.begin(todo)
            if todo:
                with phase("prefix_wait_s"):
                    inputs, timings.phases["prefix_s"] = inputs_job.result()
                timings.phases["driver_setup_s"] = time.perf_counter() - started  # the three, overlapped
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if todo:
            try:
                with (view(state) if view else contextlib.nullcontext()), phase("fit_s"):
                    backend.run(sweep, todo, inputs, datasets, state, timings)
            finally:
                with phase("tracking_close_s"):
                    state.close()
        else:
            with phase("tracking_close_s"):
                state.close()
        if figures:  # drawn while Ray shuts down (below): neither needs the other
            drawing = threading.Thread(target=_timed_into, args=(timings, "figures_s", state.log_figures),
                                       name="figures")
            drawing.start()  # on the MLflow parents of the complete points, where new
    finally:
        with phase("ray_shutdown_s"):
            backend.close()
        if drawing is not None:
            with phase("figures_wait_s"):
                drawing.join()
    return RunOutcome(state=state, trained=state.trained, reused=len(plan.folds) - len(todo),
                      failed=dict(state.errors), timings=timings.summary())


def _timed_into(timings: RunTimings, name: str, fn) -> None:
    with timings.phase(name):
        fn()


def _timed(fn, *args):
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t


def fold_inputs(sweep: Sweep, todo: list[Fold], datasets: dict[str, Any]) -> FoldInputs:
    """One frozen prefix per (dataset, backbone) among the folds to train, and the per-fold jobs."""
    prefixes: dict[str, Any] = {}
    jobs: dict[str, FoldJob] = {}
    threads = max(1, int(sweep.resources.cpu))
    for f in todo:
        groups = []
        ids = data_ids(f.trial)
        for did, key in zip(ids, f.data_keys, strict=False):  # a cross-dataset unit reads two datasets
            group = prefix_group(f.trial, key)
            if group not in prefixes:
                prefixes[group] = prefix_for(f.trial, datasets[did], sweep.paths.cache)
            groups.append(group)
        cross = {"test_data": ids[1], "test_prefix": groups[1]} if f.trial.cross else {}
        jobs[f.key] = FoldJob(trial=f.trial, subject=f.subject, data=ids[0], prefix=groups[0], threads=threads,
                              **cross)
    return FoldInputs(prefixes=prefixes, jobs=jobs)


# ------------------------------------------------------------------------------------------------------
def _tune_callback(state: SweepState, timings: RunTimings | None = None):
    from ray import tune

    timings = timings or RunTimings()

    nodes = NodeWatch()

    class FoldCallback(tune.Callback):
        """Driver side: every finished fold goes to the results store, MLflow and the live view; a node
        lost from the cluster is one line (NodeWatch)."""

        def on_step_begin(self, iteration, trials, **info):
            nodes.check()

        def on_trial_start(self, iteration, trials, trial, **info):  # Tune's names; trial: Tune's Trial
            for key in _keys(trial):
                timings.trial(key)["start"] = time.time()
                state.started(key)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            key = result.get("fold_key") or trial.config["fold"]["key"]  # stacked folds: each report names its own
            blob = result.pop(RESULT_KEY, None)  # keep Tune's own trial state small
            if blob is None:
                state.progress(key, result)
                return
            if state.store.has(key):  # a trial Tune ran again after its fold was stored (its node was lost
                return                # after the last report): the fold is not counted or tracked twice
            finished = FinishedFold.loads(blob)
            t = timings.trial(key)
            t0 = time.perf_counter()
            state.finished(key, finished.result, finished.node)
            t["store_and_track_s"] = time.perf_counter() - t0
            t["end"] = time.time()
            t.update({k: float(v) for k, v in finished.timings.items() if v is not None})

        def on_trial_recover(self, iteration, trials, trial, **info):
            nodes.check(force=True)  # its node's line first, when that is why
            for key in _keys(trial, unfinished=state):
                state.retrying(key=key, error=_trial_error(trial), nodes_lost=bool(nodes.reported))

        def on_trial_error(self, iteration, trials, trial, **info):
            for key in _keys(trial, unfinished=state):
                state.failed(key, _trial_error(trial))

        def __reduce__(self):  # Tune pickles its run config; the live state stays in this process
            return (_NullCallback, ())

    return FoldCallback()


class _NullCallback:
    pass


def _keys(tune_trial, unfinished: SweepState | None = None) -> list[str]:
    """The fold keys a Tune trial trains (one, or K stacked), less those already stored when `unfinished`."""
    f = tune_trial.config["fold"]
    keys = f.get("keys") or [f["key"]]
    return [k for k in keys if unfinished is None or not unfinished.store.has(k)]


def trial_units(todo: list[Fold], per_trial: int) -> list[list[Fold]]:
    """The folds to train, as Tune trials: one fold each, or up to `per_trial` folds of one (dataset,
    point, seed) each where they can be trained stacked (resources.folds_per_trial; LOSO with SGD)."""
    if per_trial <= 1:
        return [[f] for f in todo]
    units: list[list[Fold]] = []
    by_group: dict[str, list[Fold]] = {}
    for f in todo:
        if stackable(f.trial):
            by_group.setdefault(f.group, []).append(f)
        else:
            units.append([f])
    for folds in by_group.values():
        units += [folds[i:i + per_trial] for i in range(0, len(folds), per_trial)]
    return units


class NodeWatch:
    """One warning line per Ray node that leaves the cluster while the sweep runs; the folds it ran are
    retried by Tune, each with a line of its own (SweepState.retrying). Checked at most every `every` s
    from Tune's loop (Ray's own view, which learns of a dead node after its health checks fail), and at
    once when a trial fails (`force`): then a node whose raylet port refuses connections is lost too."""

    def __init__(self, every: float = 2.0):
        self.every, self.last = every, 0.0
        self.alive: set[str] | None = None
        self.reported: set[str] = set()

    def check(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        import ray

        try:
            nodes = {n["NodeID"]: n for n in ray.nodes()}
        except Exception:  # noqa: BLE001 - a check for a message, never a failure of the sweep
            return
        alive = {k for k, n in nodes.items() if n.get("Alive") and not (force and _refuses(n))}
        for k in sorted((self.alive or set()) - alive - self.reported):
            ip = nodes.get(k, {}).get("NodeManagerAddress", "?")
            logger.warning(f"Ray node {ip} ({k[:8]}) was lost: the folds it was running are retried on the "
                           f"other nodes")
            self.reported.add(k)
        self.alive = alive if self.alive is None else (self.alive & alive) | (alive - self.reported)


def _refuses(node: dict[str, Any]) -> bool:
    """The node's raylet port refuses a connection: its raylet is gone (a timeout proves nothing)."""
    try:
        with socket.create_connection((node["NodeManagerAddress"], int(node["NodeManagerPort"])), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except (OSError, KeyError, ValueError):
        return False


def _trial_error(tune_trial) -> str:
    trial = tune_trial
    path = getattr(trial, "error_file", None)
    try:
        if path and os.path.exists(path):
            text = Path(path).read_text().strip()
            return text.splitlines()[-1] if text else "unknown error"
    except OSError:
        pass
    err = getattr(trial, "error_msg", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    return str(err or "the trial failed (see the Ray logs)")


@contextlib.contextmanager
def _stdout_to(path: Path):
    """Ray Tune prints its experiment box and result paths on stdout: into `path` (appended) instead,
    out of the user's way. Our views hold the real stream (orchestrator.reporting.view.console)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as log, contextlib.redirect_stdout(log):
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} microau-sweep run\n")
        log.flush()
        yield


class _InterruptNotice(logging.Filter):
    """Ray Tune's Ctrl-C messages advise `Tuner.restore(...)`, which is not how this tool resumes: drop
    them and say once what is kept and how to go on (run the same command again)."""

    def __init__(self, sweep: Sweep):
        super().__init__()
        self.sweep = sweep
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "Stop signal received" in msg:
            self.interrupted = True
            logger.warning(f"interrupted: stopping the running folds; every finished fold is stored. Run "
                           f"`microau-sweep run {self.sweep.source}` again to train the rest (nothing finished "
                           f"is retrained).")
            return False
        return "Tuner.restore(" not in msg and "Resume experiment with" not in msg


@contextlib.contextmanager
def _tune_interrupt_notice(sweep: Sweep):
    notice = _InterruptNotice(sweep)
    log = logging.getLogger("ray.tune.tune")
    log.addFilter(notice)
    try:
        yield notice
    finally:
        log.removeFilter(notice)


def _tuner(sweep: Sweep, todo: list[Fold], inputs: FoldInputs, datasets: dict[str, Any], state: SweepState,
           timings: RunTimings | None = None, reuse_workers: bool = True):
    """One Tune trial per fold to train. Each trial's config names its fold (key, dataset, point, seed,
    subject) and its last result carries the fold's F1/ACC, so Ray's own tools (`ExperimentAnalysis`,
    `ResultGrid.get_dataframe()`) show a real table; the experiment folder is `<workdir>/ray_results/
    <sweep name>`, the same for every run of the sweep."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # JSON + CSV below; no TensorBoard
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    jobs = {k: j.to_dict() for k, j in inputs.jobs.items()}
    trainable = named_trainable(tune.with_parameters(fold_trainable, jobs=jobs, datasets=datasets,
                                                     prefixes=inputs.prefixes))
    trainable = tune.with_resources(trainable, {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu})
    run_config = tune.RunConfig(
        name=sweep.name,
        storage_path=str(sweep.paths.ray_results.resolve()),
        failure_config=tune.FailureConfig(max_failures=sweep.retries),
        # ours first: it takes the FoldResult out of the last result before the loggers write it
        callbacks=[_tune_callback(state, timings), JsonLoggerCallback(), CSVLoggerCallback()],
        verbose=0,
    )
    tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=sweep.max_concurrent,
                                  reuse_actors=reuse_workers,  # a worker process trains fold after fold
                                  trial_dirname_creator=_trial_dirname)
    folds = []
    for unit in trial_units(todo, sweep.resources.folds_per_trial):
        f = unit[0]
        folds.append({"key": f.key, "dataset": f.trial.dataset, "point": f.trial.point, "label": f.trial.point_label,
                      "seed": f.trial.seed, "subject": "+".join(u.subject for u in unit),
                      **({"keys": [u.key for u in unit]} if len(unit) > 1 else {})})
    return tune.Tuner(trainable, param_space={"fold": tune.grid_search(folds)},
                      tune_config=tune_config, run_config=run_config)


def _trial_dirname(tune_trial) -> str:
    f = tune_trial.config["fold"]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{f['dataset']}-p{f['point']}-s{f['seed']}-{f['subject']}-"
                                            f"{tune_trial.trial_id}")


# what the search's Tune run (orchestrator/execution/search.py) shares with the grid's
stdout_to, trial_error, tune_interrupt_notice = _stdout_to, _trial_error, _tune_interrupt_notice
