"""`microau-sweep run` of a search sweep (`search:`): Ray Tune's searchers and schedulers over whole LOSO
points (docs/sweeps.md, "Searching").

One Tune trial per candidate. Its trainable (`candidate_trainable`) is a light coordinator: no CPU of its
own, pinned to the driver's node (Ray's `node:<ip>` resource) so it reads the workdir's results store
read-only. It resolves the candidate's config from the sampled values (the sweep's base config with those
keys set: the same config hash and fold keys as a grid point with the same values), takes its stored folds
as they are, and launches the missing ones as Ray tasks with the sweep's `resources`, in the subject order
every candidate shares (orchestrator.planning.candidates.subject_order). After each fold, in that order, it
`tune.report`s the metric pooled over the folds so far with `folds_done` as Tune's time axis, and the
folds it trained since the last report (FinishedFold texts, orchestrator/execution/jobs.py). With
`early_stop`, folds are launched up to the next rung of the ASHA scheduler only, so a stopped candidate
trains no fold past the rung that stopped it.

The driver stays the only writer: its Tune callback hands each fold to `SweepState` (the results store
and MLflow, as a grid sweep's folds) and records the candidates (orchestrator.planning.candidates).
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.execution.jobs import FinishedFold, FoldJob
from orchestrator.execution.runner import RayTuneBackend, stdout_to, trial_error, tune_interrupt_notice
from orchestrator.execution.state import SweepState, open_tracker
from orchestrator.execution.trainable import prefix_for, prefix_group, run_fold
from orchestrator.planning.candidates import (
    Candidate,
    Candidates,
    base_trials,
    load_candidates,
    point_of,
    subject_order,
    trial_of,
    with_candidates,
)
from orchestrator.planning.data import data_id, record_prepared
from orchestrator.planning.lock import WorkdirLock
from orchestrator.planning.plan import Fold, make_plan, test_subjects
from orchestrator.planning.store import ResultsStore, claim_name, ensure_writable, fold_key
from orchestrator.reporting.results import SweepResults, results_from_store
from orchestrator.spec.resolved import Sweep
from orchestrator.spec.schema import Point
from orchestrator.spec.search import SearchSpec, metric_of

logger = logging.getLogger(__name__)

SCORE = "score"  # the metric Tune's searcher and scheduler read (the search's metric, pooled so far)
TIME = "folds_done"  # Tune's time axis
FOLDS_KEY = "search_folds"  # the tune.report key carrying [[fold key, FinishedFold text], ...]


@dataclass
class SearchOutcome:
    results: SweepResults  # the candidates as points, from the store
    candidates: Candidates
    trained: int = 0
    reused: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # fold key or candidate -> error


def milestones(n: int, search: SearchSpec) -> list[int]:
    """The fold counts after which a candidate may be stopped (ASHA's rungs: grace, grace*rf, ...) and
    its last, `n`: a candidate launches folds up to the next one only. Without early_stop: [n]."""
    es = search.early_stop
    if es is None:
        return [n]
    out, k = [], 0
    while True:
        m = int(math.ceil(es.grace_folds * es.reduction_factor ** k))
        if m >= n:
            break
        out.append(m)
        k += 1
    return out + [n]


def run_search(sweep: Sweep, address: str | None = None, *, quiet: bool = False, progress: bool = True,
               dashboard: bool = False, share_name: bool = False, backend: RayTuneBackend | None = None,
               lines: Callable[[str], None] | None = None, inject: Any = None,
               tracking: bool = True) -> SearchOutcome:
    """Run the search until it holds `num_samples` finished candidates per dataset searched; every fold of
    a candidate goes to the results store and MLflow as a grid fold does. `lines(text)`: where the
    progress lines go (one per candidate started, fold reported, candidate finished; the command's
    stream: Tune's own output goes to `<workdir>/logs/tune.log`, and so do these lines, logged there
    too). `inject(fold key)`: tests only,
    called on the driver after each fold it stores (to stop a search mid-way); `tracking`: False leaves
    MLflow out (tests that check the search, not its tracking)."""
    ensure_writable(sweep.paths.workdir, "workdir", "nothing could be stored")
    with WorkdirLock(sweep.paths.lock, sweep=str(Path(sweep.source).resolve()) if sweep.source else sweep.name):
        claim_name(sweep, share=share_name)
        backend = backend or RayTuneBackend(sweep, address, quiet=quiet, progress=progress, dashboard=dashboard)
        try:
            return _search_locked(sweep, backend, _Lines(lines), inject, tracking)
        finally:
            backend.close()


def _search_locked(sweep: Sweep, backend: RayTuneBackend, lines: _Lines, inject: Any,
                   tracking: bool) -> SearchOutcome:
    store = ResultsStore(sweep.paths.results)
    store.check_writable()
    ensure_writable(sweep.paths.reports, "reports folder", "the table could not be written at the end")
    search = sweep.spec.search
    bases = base_trials(sweep)
    candidates = load_candidates(sweep)
    datasets = backend.prepare(sweep, bases)
    record_prepared(sweep, datasets)
    state = SweepState(make_plan(with_candidates(sweep, candidates), datasets, store=store), tracking=tracking,
                       tracker=open_tracker(sweep) if tracking else None)
    state.begin([])
    started = False
    try:
        for base in bases:
            did = data_id(base)
            data = datasets[did]
            order = [s for s in subject_order(data.subjects, search.seed)
                     if s in set(test_subjects(sweep, base.dataset, data.subjects))]
            mine = candidates.of(base.dataset)
            done = [c for c in mine if c.finished]
            if len(done) >= search.num_samples:
                continue
            if not started:
                backend.start()
                started = True
            book = _Book(sweep, candidates, state, base.dataset, data.key, order, inject, lines)
            tuner = _tuner(sweep, search, base, data, order, book, backend)
            with tune_interrupt_notice(sweep) as notice, stdout_to(sweep.paths.logs / "tune.log"):
                tuner.fit()
            if book.error is not None:
                raise book.error
            if notice.interrupted:  # Ctrl-C: what finished is recorded; the same command goes on
                break
    finally:
        state.close()
        candidates.save()
    final = with_candidates(sweep, candidates)
    results = results_from_store(make_plan(final, datasets, store=store))
    trained = state.trained
    return SearchOutcome(results=results, candidates=candidates, trained=trained,
                         reused=sum(g.done for g in results.groups.values()) - trained, failed=dict(state.errors))


class _Lines:
    """The search's progress lines: logged (into tune.log, where Tune's output goes while it runs) and
    handed to the command's `lines`, which holds the user's stream."""

    def __init__(self, lines: Callable[[str], None] | None):
        self.lines = lines

    def __call__(self, text: str) -> None:
        logger.info(text)
        if self.lines is not None:
            self.lines(text)


class _Book:
    """The driver's side of one dataset's search: Tune trial -> candidate, the candidates' folds, and the
    record kept current (written after every change)."""

    def __init__(self, sweep: Sweep, candidates: Candidates, state: SweepState, dataset: str, data_key: str,
                 order: list[str], inject: Any, lines: _Lines):
        self.sweep, self.candidates, self.state = sweep, candidates, state
        self.dataset, self.data_key, self.order, self.inject, self.say = dataset, data_key, order, inject, lines
        self.keys = list(sweep.spec.search.space)
        self.by_trial: dict[str, Candidate] = {}
        self.stored: set[str] = set()  # fold keys stored by this run
        self.error: BaseException | None = None
        # drawn before and not finished: Tune runs them first (points_to_evaluate), under their own index
        self.requeued = [c for c in candidates.of(dataset) if not c.finished]

    def folds(self, c: Candidate) -> list[Fold]:
        trial = trial_of(self.sweep, c)
        return [Fold(trial=trial, subject=s, data_key=self.data_key) for s in self.order]

    def start(self, trial_id: str, config: dict[str, Any]) -> Candidate:
        params = {k: config[k] for k in self.keys}
        params = {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}  # numpy scalars
        c = next((c for c in self.requeued if c.params == params), None)
        if c is not None:
            self.requeued.remove(c)
        else:
            c = self.candidates.add(self.dataset, params)
        c.status, c.error, c.folds_total = "running", None, len(self.order)
        self.by_trial[trial_id] = c
        self.state.add_folds(self.folds(c))
        self.candidates.save()
        self.say(f"candidate {point_of(c).label} ({self.dataset}): started")
        return c

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        c = self.by_trial.get(trial_id)
        blob = result.pop(FOLDS_KEY, None)
        if c is None:
            return
        for key, text in json.loads(blob or "[]"):
            if key in self.stored:  # two candidates that drew the same values train the same folds: once stored
                continue
            self.stored.add(key)
            finished = FinishedFold.loads(text)
            self.state.finished(key, finished.result, finished.node)
            if self.inject is not None:
                self.inject(key)
        if TIME in result:
            c.folds_done = int(result[TIME])
            score = result.get(SCORE)
            c.metric = None if score is None or (isinstance(score, float) and math.isnan(score)) else float(score)
            self.candidates.save()
            value = "-" if c.metric is None else f"{c.metric:.4f}"
            self.say(f"candidate {point_of(c).label} ({self.dataset}): {c.folds_done}/{len(self.order)} folds, "
                     f"{self.sweep.spec.search.metric} {value}")

    def complete(self, trial_id: str) -> None:
        c = self.by_trial.get(trial_id)
        if c is None:
            return
        c.status = "complete" if c.folds_done >= len(self.order) else "stopped"
        self.candidates.save()
        self._tag(c)
        what = (f"complete, {self.sweep.spec.search.metric} {c.metric:.4f}" if c.status == "complete" and
                c.metric is not None else f"{c.status} after {c.folds_done}/{len(self.order)} folds")
        self.say(f"candidate {point_of(c).label} ({self.dataset}): {what}")

    def _tag(self, c: Candidate) -> None:
        """The candidate's MLflow parent says which candidate it is and how it ended (a stopped one is an
        incomplete point there, as in the tables)."""
        self.state.tag(self.folds(c)[0].group, {"search.candidate": str(c.index), "search.status": c.status,
                                                "search.folds_done": str(c.folds_done)})

    def failed(self, trial_id: str, error: str) -> None:
        c = self.by_trial.get(trial_id)
        if c is None:
            return
        c.status, c.error = "failed", error
        self.candidates.save()
        self._tag(c)
        logger.warning(f"warning: candidate {point_of(c).label} ({self.dataset}) failed after {c.folds_done} "
                       f"folds: {error}; its finished folds are stored, a rerun runs it again")


def _callback(book: _Book):
    from ray import tune

    class SearchCallback(tune.Callback):
        """Driver side: candidates recorded, their folds stored and tracked (SweepState)."""

        def on_trial_start(self, iteration, trials, trial, **info):
            book.start(trial.trial_id, trial.config)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            try:
                book.result(trial.trial_id, result)
            except BaseException as e:  # an injected stop (tests) or a store error: end the search here
                book.error = e
                raise

        def on_trial_complete(self, iteration, trials, trial, **info):
            book.complete(trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            book.failed(trial.trial_id, trial_error(trial))

        def __reduce__(self):  # Tune pickles its run config; the live state stays in this process
            return (_Null, ())

    return SearchCallback()


class _Null:
    pass


def restore_rungs(scheduler, book: _Book, metric: str, mode: str) -> int:
    """ASHA's record of its rungs rebuilt from the finished candidates (a resumed search): at each rung, the
    metric pooled over the first folds of every candidate that reached it, recomputed from the store, so a
    candidate run now is compared with those of the earlier runs too. Ray keeps that record in its
    brackets (`_rungs`, milestone -> {trial id: value}); a Ray whose scheduler keeps it otherwise leaves
    the scheduler fresh (one note). Returns how many values were restored."""
    from model.metrics import pooled_metrics  # heavy (sklearn, torch): a resumed search only

    store = book.state.store
    done = [c for c in book.candidates.of(book.dataset) if c.finished]
    if not done:
        return 0
    sign = 1.0 if mode == "max" else -1.0
    try:
        brackets = list(scheduler._brackets)
        rungs = [(milestone, recorded) for b in brackets for milestone, recorded in b._rungs]
    except (AttributeError, TypeError, ValueError):
        logger.warning("note: the early-stopping scheduler starts afresh: the candidates run now are compared "
                       "with each other only (this Ray's ASHA keeps its rungs otherwise)")
        return 0
    n = 0
    for c in done:
        keys = [f.key for f in book.folds(c)]
        for milestone, recorded in rungs:
            m = int(math.ceil(milestone))
            if c.folds_done < m or not all(store.intact(k) for k in keys[:m]):
                continue
            value = metric_of(pooled_metrics([store.result(k) for k in keys[:m]], n_boot=1), metric)
            if value is not None:
                recorded[f"earlier-c{c.index}"] = sign * value
                n += 1
    return n


def _dimension(dim):
    from ray import tune

    lo_hi = dim.args
    return {"uniform": lambda: tune.uniform(*lo_hi), "loguniform": lambda: tune.loguniform(*lo_hi),
            "choice": lambda: tune.choice(lo_hi), "randint": lambda: tune.randint(*lo_hi)}[dim.kind]()


def _tuner(sweep: Sweep, search: SearchSpec, base, data, order: list[str], book: _Book,
           backend: RayTuneBackend):
    """The Tune run of one dataset's search: the searcher (restored from the recorded candidates), the
    scheduler, the coordinator trainable pinned to this node."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter

    mine = book.candidates.of(book.dataset)
    finished = [c for c in mine if c.finished and c.metric is not None]
    left = search.num_samples - sum(c.finished for c in mine)
    space = {k: _dimension(d) for k, d in search.space.items()}
    requeued = [dict(c.params) for c in book.requeued]
    seed = search.seed + len(mine)  # a resumed searcher does not draw the first run's values again
    param_space: dict[str, Any] = {}
    if search.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study: ours say what happens

        searcher = OptunaSearch(space=OptunaSearch.convert_search_space(space), metric=SCORE, mode=search.mode,
                                seed=seed, points_to_evaluate=requeued or None)
        for c in finished:  # the searcher's state rebuilt from the record
            searcher.add_evaluated_point(dict(c.params), c.metric)
        algo = ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        algo = BasicVariantGenerator(points_to_evaluate=requeued or None, random_state=seed,
                                     max_concurrent=search.max_concurrent)
        param_space = space
    scheduler = None
    if search.early_stop is not None:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr=TIME, max_t=len(order), grace_period=search.early_stop.grace_folds,
                                  reduction_factor=search.early_stop.reduction_factor)
        restore_rungs(scheduler, book, search.metric, search.mode)
    prefix = prefix_for(base, data, sweep.paths.cache)
    ctx = {"spec": sweep.spec, "dataset": base.dataset, "seed": base.seed, "order": order,
           "data_id": data_id(base), "data_key": data.key, "data": ray.put(data),
           "prefixes": {prefix_group(base, data.key): ray.put(prefix)},
           # absolute: a Tune trial runs in a folder of its own
           "results": str(sweep.paths.results.resolve()), "cache": str(sweep.paths.cache.resolve()),
           "resources": {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu},
           "retries": sweep.retries, "milestones": milestones(len(order), search), "metric": search.metric,
           "keys": list(search.space), "threads": max(1, int(sweep.resources.cpu))}
    node = f"node:{ray.util.get_node_ip_address()}"
    trainable = tune.with_resources(tune.with_parameters(candidate_trainable, ctx=ctx), {"cpu": 0, node: 0.001})
    run_config = tune.RunConfig(name=f"{sweep.name}-search-{base.dataset}",
                                storage_path=str(sweep.paths.ray_results.resolve()),
                                failure_config=tune.FailureConfig(max_failures=0),  # folds retry on their own
                                # ours first: it takes the folds out of each result before the loggers write it
                                callbacks=[_callback(book), JsonLoggerCallback(), CSVLoggerCallback()], verbose=0)
    tune_config = tune.TuneConfig(metric=SCORE, mode=search.mode, search_alg=algo, scheduler=scheduler,
                                  num_samples=max(left, 0),  # at most max_concurrent: the search_alg's
                                  reuse_actors=True,  # one coordinator process imports the model once
                                  trial_dirname_creator=lambda t: f"candidate-{t.trial_id}")
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


# ------------------------------------------------------------------------------------------------------
# on the workers
def fold_task(job: dict[str, Any], data, prefix) -> str:
    """One fold of a candidate, as a Ray task: `run_fold` -> a FinishedFold text."""
    import ray

    t0 = time.perf_counter()
    j = FoldJob.from_dict(job)
    ctx = ray.get_runtime_context()
    node = {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(), "pid": os.getpid(),
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids())}
    result = run_fold(j.trial, data, j.subject, prefix=prefix, threads=j.threads)
    return FinishedFold(result=result, node=node, timings={"fold_s": time.perf_counter() - t0}).dumps()


def candidate_trainable(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """The Tune trainable of one candidate: its folds, stored ones read, missing ones launched as Ray tasks
    up to the next rung; one report per fold in the shared subject order (module docstring)."""
    import warnings

    import ray
    from ray import tune

    from model.metrics import pooled_metrics  # heavy (sklearn, torch): in the coordinator only
    from model.result import FoldResult

    warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
    spec = ctx["spec"]
    params = {k: config[k] for k in ctx["keys"]}
    params = {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}
    trial = spec.resolve(ctx["dataset"], Point(index=0, variant=None, params=params, grid={}), ctx["seed"])
    order = ctx["order"]
    keys = [fold_key(trial.hash, s, trial.seed, ctx["data_key"]) for s in order]
    store = ResultsStore(ctx["results"])  # read only: the driver writes
    group = prefix_group(trial, ctx["data_key"])
    prefix = ctx["prefixes"].get(group)
    if prefix is None:  # a sampled key changes the frozen prefix: from the cache on this node, or computed
        prefix = ray.put(prefix_for(trial, ray.get(ctx["data"]), ctx["cache"]))
    res = ctx["resources"]
    task = ray.remote(fold_task).options(num_cpus=res["cpu"], num_gpus=res["gpu"], max_retries=ctx["retries"],
                                         scheduling_strategy="DEFAULT")  # not in this trial's bundle
    done: dict[int, Any] = {}
    unsent: list[list[str]] = []
    reported, launched = 0, 0
    for end in ctx["milestones"]:
        running = {}
        for i in range(launched, end):
            if store.intact(keys[i]):
                done[i] = store.result(keys[i])
            else:
                job = FoldJob(trial=trial, subject=order[i], data=ctx["data_id"], prefix=group,
                              threads=ctx["threads"]).to_dict()
                running[task.remote(job, ctx["data"], prefix)] = i
        launched = end
        while True:
            while reported < end and reported in done:
                reported += 1
                m = pooled_metrics([done[j] for j in range(reported)], n_boot=1)
                score = metric_of(m, ctx["metric"])
                tune.report({TIME: reported, SCORE: float("nan") if score is None else score,
                             FOLDS_KEY: json.dumps(unsent)})
                unsent = []
            if reported >= end:
                break
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                i = running.pop(ref)
                text = ray.get(ref)
                done[i] = FoldResult.from_dict(FinishedFold.loads(text).result)
                unsent.append([keys[i], text])

