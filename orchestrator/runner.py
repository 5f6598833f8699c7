"""`microau-sweep run`: the Ray Tune LOSO sweep.

Driver: prepare each dataset once, compute each frozen prefix once, put both in the object store
(`tune.with_parameters`), schedule one Tune trial per fold not yet in the results store with
`tune.with_resources`, and own all tracking (results store, MLflow, live view) in a driver-side
`tune.Callback`. Trials only train and `tune.report` their FoldResult.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import socket
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from orchestrator.config import SweepSpec, TrialConfig
from orchestrator.data import data_id, data_ids, prepare_all, record_prepared
from orchestrator.trial import dumps, prefix_for, prefix_group, run_fold
from orchestrator.lock import WorkdirLock
from orchestrator.parallel import RaySamples
from orchestrator.plan import Fold, make_plan
from orchestrator.state import SweepState
from orchestrator.store import ResultsStore, claim_name, ensure_writable
from preprocessing.errors import MicroAUError

PROGRESS_EVERY_S = 1.0  # a trial reports its epochs to the driver at most this often (and always the last)
RESULT_KEY = "fold_result"  # the tune.report key carrying the FoldResult (JSON text), popped by the driver
TIMING_KEY = "worker_timings"  # the worker's side of a trial's fixed costs (JSON text), popped by the driver
_MAX_SOCKET_DIR = 60  # Ray's Unix socket paths (<temp>/session_<date>_<pid>/sockets/...) must stay < 108


class ResourceError(MicroAUError, RuntimeError):
    """The cluster cannot run a trial of this sweep (e.g. GPUs asked for, none present)."""


@dataclass
class RunOutcome:
    state: SweepState
    trained: int = 0
    reused: int = 0
    failed: Dict[str, str] = field(default_factory=dict)  # fold key -> error
    timings: Dict[str, Any] = field(default_factory=dict)  # RunTimings.summary(): where the wall time went


class RunTimings:
    """Where a run's wall time goes: the sweep's phases (seconds each) and, per trained fold, the driver's
    view (trial start -> its result stored and tracked) against the worker's (entering the trainable,
    first imports, the fold's own `total_s`, reporting). `run --json` prints `summary()` as `timings`;
    bench/overhead.py reads it."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.phases: Dict[str, float] = {}
        self.trials: Dict[str, Dict[str, float]] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t

    def trial(self, key: str) -> Dict[str, float]:
        return self.trials.setdefault(key, {})

    def summary(self) -> Dict[str, Any]:
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
        gaps = [round(b[0] - a[1], 4) for a, b in zip(ended, ended[1:])]  # one trial's end -> the next start
        return {"total_s": round(time.perf_counter() - self.t0, 3), "gaps_between_trials_s": gaps,
                "phases": {k: round(v, 3) for k, v in self.phases.items()}, "trials": trials}


# ------------------------------------------------------------------------------------------------------
# the trainable (runs in a Ray worker; no MLflow, no store)
def fold_trainable(config: Dict[str, Any], plan: Dict[str, Dict[str, Any]], datasets: Dict[str, Any],
                   prefixes: Dict[str, Any]) -> None:
    entered = time.time()
    t_entered = time.perf_counter()
    import ray
    from ray import tune

    # prepared arrays arrive read-only from the object store; the model only reads them
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    first = "model.train" not in sys.modules  # the first fold of this worker process imports torch & model
    t0 = time.perf_counter()
    import model.train  # noqa: F401

    t_import = time.perf_counter() - t0
    job = plan[config["fold"]["key"]]
    trial = TrialConfig.model_validate(job["trial"])
    ctx = ray.get_runtime_context()
    node = {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(), "pid": os.getpid(),
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids())}

    last, waited = [0.0], [0.0]

    def on_epoch(info: Dict[str, Any]) -> None:  # per-epoch losses, for the live view
        # Each report is a round trip to the driver (Tune's function trainable waits until it is taken):
        # at most one per PROGRESS_EVERY_S, so short epochs do not pay it every time
        now = time.perf_counter()
        if now - last[0] < PROGRESS_EVERY_S and info.get("epoch") != info.get("epochs"):
            return
        tune.report({k: v for k, v in info.items() if isinstance(v, (int, float))})
        last[0] = time.perf_counter()
        waited[0] += last[0] - now

    t_setup = time.perf_counter() - t_entered
    t0 = time.perf_counter()
    test = job.get("test_data")  # a cross-dataset unit: the test dataset's data id
    result = run_fold(trial, datasets[data_id(trial)], job["subject"], prefix=prefixes.get(job["prefix"]),
                      on_epoch=on_epoch, threads=job.get("threads"), test_data=datasets[test] if test else None,
                      test_prefix=prefixes.get(job.get("test_prefix")))
    t_fold = time.perf_counter() - t0
    from model.metrics import pooled_metrics
    from model.result import FoldResult

    t0 = time.perf_counter()
    m = pooled_metrics([FoldResult.from_dict(result)], n_boot=1)  # this fold alone, for Tune's own table
    blob = dumps(result)
    timing = {"entered": entered, "first_in_worker": first, "import_s": t_import, "setup_s": t_setup,
              "fold_s": t_fold, "fold_total_s": result["timings"].get("total_s"), "epoch_reports_s": waited[0],
              "report_s": time.perf_counter() - t0}
    tune.report({RESULT_KEY: blob, TIMING_KEY: json.dumps(timing), "finished": 1, "fold_f1": m["f1"],
                 "fold_acc": m["acc"],
                 "n_test": len(result["sample_ids"]), **node})


# ------------------------------------------------------------------------------------------------------
# Ray session
def _ray_temp_dir(workdir: Path) -> str:
    """Ray's temp dir inside the workdir when its path is short enough for Ray's Unix sockets."""
    wanted = (workdir / "ray").resolve()
    if len(str(wanted)) <= _MAX_SOCKET_DIR:
        wanted.mkdir(parents=True, exist_ok=True)
        return str(wanted)
    return tempfile.mkdtemp(prefix="microau-ray-")


def connect(spec: SweepSpec, address: Optional[str], quiet: bool, dashboard: bool = False) -> bool:
    """Join `address`, reuse an initialised Ray, or start an embedded one. True if we started it.

    The embedded Ray's dashboard is off unless asked for, and then bound to 127.0.0.1 only."""
    import ray

    if ray.is_initialized():
        return False
    for name in _RAY_STARTUP_LOGGERS:
        log = logging.getLogger(name)
        for f in [f for f in log.filters if isinstance(f, _ToLogFile)]:
            log.removeFilter(f)  # an earlier sweep of this process
        log.addFilter(_ToLogFile(spec.workdir_path() / "logs" / "ray.log"))
    common = dict(log_to_driver=not quiet, configure_logging=True, logging_level="WARNING")
    if address:
        ray.init(address=address, **common)
        return True
    extra = {}
    if dashboard:
        missing = ray._private.utils.get_dashboard_dependency_error()
        if missing:
            raise ResourceError(f"--dashboard: the Ray dashboard needs ray[default] ({missing}); install it "
                                f"with `.venv/bin/pip install -e '.[cluster]'` or run without --dashboard")
        extra = {"dashboard_host": "127.0.0.1"}
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=dashboard,
             _temp_dir=_ray_temp_dir(spec.workdir_path()), **extra, **common)
    return True


class _RaySession:
    """`connect` on first call (preparing samples, or scheduling folds), once; `close()` shuts down the Ray
    this run started or joined."""

    def __init__(self, spec: SweepSpec, address: Optional[str], quiet: bool, dashboard: bool):
        self.args = (spec, address, quiet, dashboard)
        self.connected = self.started = False

    def __call__(self) -> None:
        if not self.connected:
            spec, address, quiet, dashboard = self.args
            self.started = connect(spec, address, quiet=quiet, dashboard=dashboard)
            self.connected = True

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def check_resources(spec: SweepSpec, address: Optional[str] = None) -> Dict[str, float]:
    """Fail now, with a message saying what to change, when no node can run one fold of the sweep."""
    import ray

    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    where = f"the Ray cluster at {address}" if address else "the local Ray instance"
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = {"CPU": sum(n["Resources"].get("CPU", 0) for n in nodes),
             "GPU": sum(n["Resources"].get("GPU", 0) for n in nodes)}
    if need["GPU"] > 0 and total["GPU"] == 0:
        raise ResourceError(
            f"{spec.source}: resources.gpu is {need['GPU']} per fold, but {where} has no GPU "
            f"({len(nodes)} node(s), {total['CPU']:g} CPUs). Set `resources: {{cpu: 1, gpu: 0}}` in the "
            f"sweep file to train on CPUs, or run it on a cluster with GPU nodes (--address).")
    fits = [n for n in nodes if all(n["Resources"].get(k, 0) >= v for k, v in need.items() if v > 0)]
    if not fits:
        biggest = max(((n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes),
                      default=(0, 0))
        raise ResourceError(
            f"{spec.source}: one fold asks for resources {{cpu: {need['CPU']:g}, gpu: {need['GPU']:g}}} "
            f"but no node of {where} has that much (largest: {biggest[0]:g} CPUs, {biggest[1]:g} GPUs); "
            f"lower `resources` in the sweep file")
    return total


# ------------------------------------------------------------------------------------------------------
def _tune_callback(state: SweepState, timings: Optional[RunTimings] = None):
    from ray import tune

    timings = timings or RunTimings()

    class FoldCallback(tune.Callback):
        """Driver side: every finished fold goes to the results store, MLflow and the live view."""

        def on_trial_start(self, iteration, trials, trial, **info):
            key = trial.config["fold"]["key"]
            timings.trial(key)["start"] = time.time()
            state.started(key)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            key = trial.config["fold"]["key"]
            blob = result.pop(RESULT_KEY, None)  # keep Tune's own trial state small
            worker = result.pop(TIMING_KEY, None)
            if blob is None:
                state.progress(key, result)
                return
            node = {k: result.get(k) for k in ("node_id", "node_ip", "hostname", "pid", "gpu_ids")}
            t = timings.trial(key)
            t0 = time.perf_counter()
            state.finished(key, json.loads(blob), node)
            t["store_and_track_s"] = time.perf_counter() - t0
            t["end"] = time.time()
            if worker:
                t.update({k: float(v) for k, v in json.loads(worker).items() if v is not None})

        def on_trial_recover(self, iteration, trials, trial, **info):
            state.retrying(key=trial.config["fold"]["key"], error=_trial_error(trial))

        def on_trial_error(self, iteration, trials, trial, **info):
            state.failed(trial.config["fold"]["key"], _trial_error(trial))

        def __reduce__(self):  # Tune pickles its run config; the live state stays in this process
            return (_NullCallback, ())

    return FoldCallback()


class _NullCallback:
    pass


def _trial_error(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        if path and os.path.exists(path):
            text = Path(path).read_text().strip()
            return text.splitlines()[-1] if text else "unknown error"
    except OSError:
        pass
    err = getattr(trial, "error_msg", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    return str(err or "the trial failed (see the Ray logs)")


def run_sweep(spec: SweepSpec, address: Optional[str] = None, *, quiet: bool = False,
              progress: bool = True, view: Optional[Callable[[SweepState], Any]] = None,
              dashboard: bool = False, share_name: bool = False) -> RunOutcome:
    """Run every fold of the sweep not yet in the results store; return the updated state.

    `view(state)` is a context manager for a live display (rich) or None. Holds `<workdir>/run.lock`
    throughout (orchestrator.lock); raises LockError when another run holds it. `share_name`: see
    orchestrator.store.claim_name.
    """
    workdir = spec.workdir_path()
    ensure_writable(workdir, "workdir", "nothing could be stored")
    # One run per workdir, taken before data, tracking or scheduling: a second run stops here (LockError)
    with WorkdirLock(workdir, sweep=str(Path(spec.source).resolve()) if spec.source else spec.name):
        claim_name(spec, share=share_name)  # one sweep file per name in a workdir
        return _run_locked(spec, address, quiet=quiet, progress=progress, view=view, dashboard=dashboard)


def _run_locked(spec: SweepSpec, address: Optional[str], *, quiet: bool, progress: bool,
                view: Optional[Callable[[SweepState], Any]], dashboard: bool) -> RunOutcome:
    workdir = spec.workdir_path()
    store = ResultsStore(workdir / "results")
    warn = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    store.check_writable()  # before any work: a fold that cannot be stored is a fold lost
    ensure_writable(workdir / "reports", "reports folder", "the table could not be written at the end")
    session = _RaySession(spec, address, quiet=quiet, dashboard=dashboard)
    timings = RunTimings()
    phase = timings.phase
    try:
        # samples are prepared as Ray tasks (Ray started only when there is something to prepare)
        with phase("prepare_s"):
            datasets = prepare_all(spec, spec.trials(), progress=progress, map_samples=RaySamples(session))
            record_prepared(spec, datasets, warn)
        with phase("plan_s"):
            plan = make_plan(spec, datasets, warn, store=store)  # damaged records are set aside, retrained
        todo = plan.todo
        # The driver's frozen prefixes (and its first import of torch and the model) are computed in a
        # thread, and MLflow is imported in another, while Ray starts: none needs the others. MLflow's
        # store is opened only after the resources are checked (nothing is tracked for a sweep that
        # cannot run)
        pool = ThreadPoolExecutor(2, thread_name_prefix="setup") if todo else None
        try:
            if todo:
                started = time.perf_counter()
                prefix_job = pool.submit(_timed, _prefixes_and_plan, spec, todo, datasets)
                pool.submit(importlib.import_module, "mlflow")  # a failure shows where it is used
                with phase("ray_start_s"):  # resources are checked before anything is tracked or scheduled
                    session()
                    check_resources(spec, address)
            with phase("tracking_start_s"):
                state = SweepState(plan, tracking=True)  # MLflow experiment and parent runs
                state.begin(todo)
            if todo:
                with phase("prefix_wait_s"):
                    (prefixes, jobs), timings.phases["prefix_s"] = prefix_job.result()
                timings.phases["driver_setup_s"] = time.perf_counter() - started  # the three, overlapped
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if todo:
            with phase("object_store_put_s"):  # tune.with_parameters: data and prefixes put once
                tuner = _tuner(spec, todo, jobs, datasets, prefixes, state, timings)
            try:
                with (view(state) if view else contextlib.nullcontext()), _tune_interrupt_notice(spec), \
                        _stdout_to(workdir / "logs" / "tune.log"), phase("fit_s"):
                    tuner.fit()
            finally:
                with phase("tracking_close_s"):
                    state.close()
        else:
            with phase("tracking_close_s"):
                state.close()
        with phase("figures_s"):
            state.log_figures()  # on the MLflow parents of the complete points, where new
    finally:
        with phase("ray_shutdown_s"):
            session.close()
    return RunOutcome(state=state, trained=state.trained, reused=len(plan.folds) - len(todo),
                      failed=dict(state.errors), timings=timings.summary())


def _timed(fn, *args):
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t


def _prefixes_and_plan(spec: SweepSpec, todo: List[Fold], datasets: Dict[str, Any]):
    """One frozen prefix per (dataset, backbone) among the folds to train, and the per-fold jobs."""
    prefixes: Dict[str, Any] = {}
    plan: Dict[str, Dict[str, Any]] = {}
    threads = max(1, int(spec.resources.cpu))
    for f in todo:
        groups = []
        for did, key in zip(data_ids(f.trial), f.data_keys):  # a cross-dataset unit reads two datasets
            group = prefix_group(f.trial, key)
            if group not in prefixes:
                prefixes[group] = prefix_for(f.trial, datasets[did], spec.workdir_path() / "cache")
            groups.append(group)
        plan[f.key] = {"trial": f.trial.model_dump(mode="json"), "subject": f.subject, "prefix": groups[0],
                       "threads": threads}
        if f.trial.cross:
            plan[f.key].update(test_data=data_ids(f.trial)[1], test_prefix=groups[1])
    return prefixes, plan


@contextlib.contextmanager
def _stdout_to(path: Path):
    """Ray Tune prints its experiment box and result paths on stdout: into `path` (appended) instead,
    out of the user's way. Our views hold the real stream (orchestrator.view.console)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as log, contextlib.redirect_stdout(log):
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} microau-sweep run", flush=True)
        yield


class _ToLogFile(logging.Filter):
    """Moves the records of one logger from the console into a log file (Ray's start-up notices)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {record.levelname} {record.name}: "
                        f"{record.getMessage()}\n")
        except OSError:
            return True  # no log file: show it after all
        return False


# Ray's start-up notices that are about Ray, not the sweep (token authentication is on by default)
_RAY_STARTUP_LOGGERS = ("ray._private.authentication.authentication_token_setup",
                        "ray.tune.utils.util")  # "... may be a performance bottleneck" (our callback logs to MLflow)


class _InterruptNotice(logging.Filter):
    """Ray Tune's Ctrl-C messages advise `Tuner.restore(...)`, which is not how this tool resumes: drop
    them and say once what is kept and how to go on (run the same command again)."""

    def __init__(self, spec: SweepSpec):
        super().__init__()
        self.spec = spec
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "Stop signal received" in msg:
            self.interrupted = True
            print(f"interrupted: stopping the running folds; every finished fold is stored. Run "
                  f"`microau-sweep run {self.spec.source}` again to train the rest (nothing finished is "
                  f"retrained).", file=sys.stderr, flush=True)
            return False
        return "Tuner.restore(" not in msg and "Resume experiment with" not in msg


@contextlib.contextmanager
def _tune_interrupt_notice(spec: SweepSpec):
    notice = _InterruptNotice(spec)
    log = logging.getLogger("ray.tune.tune")
    log.addFilter(notice)
    try:
        yield notice
    finally:
        log.removeFilter(notice)


def _tuner(spec: SweepSpec, todo: List[Fold], plan, datasets, prefixes, state: SweepState,
           timings: Optional[RunTimings] = None):
    """One Tune trial per fold to train. Each trial's config names its fold (key, dataset, point, seed,
    subject) and its last result carries the fold's F1/ACC, so Ray's own tools (`ExperimentAnalysis`,
    `ResultGrid.get_dataframe()`) show a real table; the experiment folder is `<workdir>/ray_results/
    <sweep name>`, the same for every run of the sweep."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # JSON + CSV below; no TensorBoard
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    trainable = tune.with_parameters(fold_trainable, plan=plan, datasets=datasets, prefixes=prefixes)
    trainable = tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    run_config = tune.RunConfig(
        name=spec.name,
        storage_path=str((spec.workdir_path() / "ray_results").resolve()),
        failure_config=tune.FailureConfig(max_failures=spec.retries),
        # ours first: it takes the FoldResult out of the last result before the loggers write it
        callbacks=[_tune_callback(state, timings), JsonLoggerCallback(), CSVLoggerCallback()],
        verbose=0,
    )
    tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.max_concurrent,
                                  reuse_actors=True,  # a worker process trains fold after fold
                                  trial_dirname_creator=_trial_dirname)
    folds = [{"key": f.key, "dataset": f.trial.dataset, "point": f.trial.point, "label": f.trial.point_label,
              "seed": f.trial.seed, "subject": f.subject} for f in todo]
    return tune.Tuner(trainable, param_space={"fold": tune.grid_search(folds)},
                      tune_config=tune_config, run_config=run_config)


def _trial_dirname(trial) -> str:
    f = trial.config["fold"]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{f['dataset']}-p{f['point']}-s{f['seed']}-{f['subject']}-"
                                            f"{trial.trial_id}")
