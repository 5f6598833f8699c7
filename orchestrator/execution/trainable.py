"""What one sweep trial executes: one LOSO fold (or one cross-dataset unit), callable without Ray
(`microau-sweep fold`).

The Ray trainable (`fold_trainable`) and the `fold` command both call `run_fold`, which runs the model's
LOSO loop (`model.train.loso`) for one test subject; the frozen prefix is computed by `prefix_for` on the
driver (once per `prefix_group`: dataset and backbone) and handed in. The trainable runs in a Ray worker:
no MLflow, no results store; it reports its epochs and, at the end, a `FinishedFold`.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from model.config import PREFIX_FIELDS
from orchestrator.execution.jobs import RESULT_KEY, FinishedFold, FoldJob
from orchestrator.spec.schema import TrialConfig, stable_hash

PROGRESS_EVERY_S = 1.0  # a trial reports its epochs to the driver at most this often (and always the last)


def prefix_group(trial: TrialConfig, data_key: str) -> str:
    """Which trials can share one frozen prefix: same prepared data, AU list and the config fields the
    prefix depends on (model.config.PREFIX_FIELDS; no torch: a search's coordinators call this)."""
    model = {k: v for k, v in trial.model.model_dump(mode="json").items() if k in PREFIX_FIELDS}
    return stable_hash({"data": data_key, "aus": trial.aus, "model": model})


def prefix_for(trial: TrialConfig, data, cache_dir, device: str = "cpu"):
    """The frozen-prefix features of `data` for the trial's backbone, from the on-disk cache in
    `cache_dir` or computed (model.cached_prefix)."""
    from model import cached_prefix  # torch: imported when a prefix is computed, for start-up time

    return cached_prefix(trial.model, data, trial.aus, cache_dir, device)


def run_fold(trial: TrialConfig, data, subject: str, prefix=None,
             on_epoch: Callable[..., None] | None = None, threads: int | None = None,
             test_data=None, test_prefix=None) -> dict[str, Any]:
    """Train on every subject but `subject`, evaluate on it -> the FoldResult as a plain dict. A
    cross-dataset trial (`trial.cross`) trains on every sample of `data` and evaluates on every sample of
    `test_data` (`model.cross_dataset_fold`; `subject` labels the unit, `test_prefix` is the test data's).

    `threads` (torch intra-op threads) applies when the config's training.threads is unset; a Ray trial
    passes its CPU share.
    """
    import torch  # heavy: imported when a fold runs, for start-up time

    n = trial.training.threads or threads
    if n:
        torch.set_num_threads(int(n))
    if trial.cross:
        from model import cross_dataset_fold  # torch: see above

        if test_data is None:
            raise ValueError(f"{trial.dataset}: a cross-dataset trial needs its test dataset")
        return cross_dataset_fold(trial, data, test_data, train_prefix=prefix, test_prefix=test_prefix,
                                  on_epoch=on_epoch, label=subject).to_dict()
    from model import loso  # torch: see above

    return loso(trial, data, prefix=prefix, subjects=[subject], on_epoch=on_epoch)[0].to_dict()



def fold_name(fold: dict[str, Any]) -> str:
    """What a fold is called where Ray shows it: the dashboard's Actors page and the prefix of its log lines
    (`casme2 full seed 1 sub05`). `fold` is a trial's `config["fold"]`."""
    return f"{fold['dataset']} {fold['label']} seed {fold['seed']} {fold['subject']}"


def named_trainable(fn: Callable[..., None]) -> type:
    """Tune's trainable class for the function trainable `fn`, whose `repr` names the trial's fold (Ray
    takes an actor's repr when it creates it, for the dashboard and the actor's log lines)."""
    from ray.tune.trainable import wrap_function

    class FoldTrainable(wrap_function(fn)):
        _name = "fold_trainable"

        def __repr__(self) -> str:
            fold = (getattr(self, "config", None) or {}).get("fold")
            return fold_name(fold) if fold else self._name

    return FoldTrainable


def run_folds(jobs: list[FoldJob], data, prefix=None, on_epoch: Callable[..., None] | None = None,
              threads: int | None = None) -> list[dict[str, Any]]:
    """K LOSO folds of one point and seed (`jobs`, one dataset) trained together as one stacked model
    (`model.train_folds`) -> their FoldResults as plain dicts, in order, each what `run_fold` gives for
    that fold alone (within float rounding). `on_epoch(info)` gets train_fold's dict plus `fold` (k)."""
    import torch  # heavy: imported when a fold runs, for start-up time

    from model import train_folds  # torch: see above

    n = jobs[0].trial.training.threads or threads
    if n:
        torch.set_num_threads(int(n))
    results = train_folds([j.trial for j in jobs], data, [j.subject for j in jobs], prefix=prefix, on_epoch=on_epoch)
    out = []
    for r in results:
        r.extras.pop("stacked_folds", None)  # stored exactly as a fold trained alone
        out.append(r.to_dict())
    return out


def stackable(trial: TrialConfig) -> bool:
    """Folds of this trial can be trained stacked (model.train_folds): LOSO with SGD."""
    return not trial.cross and trial.training.optimizer == "sgd"


def fold_trainable(config: dict[str, Any], jobs: dict[str, dict[str, Any]], datasets: dict[str, Any],
                   prefixes: dict[str, Any]) -> None:
    """The Ray Tune function trainable of one fold: `config["fold"]["key"]` picks its `FoldJob` in `jobs`
    (fold key -> FoldJob.to_dict()); `datasets` and `prefixes` come from the object store once
    (`tune.with_parameters`)."""
    entered = time.time()
    t_entered = time.perf_counter()
    import ray
    from ray import tune

    # prepared arrays arrive read-only from the object store; the model only reads them
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    first = "model.train" not in sys.modules  # the first fold of this worker process imports torch & model
    t0 = time.perf_counter()
    import model.train  # noqa: F401 - timed here: the worker's first import of torch and the model

    t_import = time.perf_counter() - t0
    # one fold, or K folds of one point trained stacked (resources.folds_per_trial)
    keys = config["fold"].get("keys") or [config["fold"]["key"]]
    fjobs = [FoldJob.from_dict(jobs[k]) for k in keys]
    ctx = ray.get_runtime_context()
    node = {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(), "pid": os.getpid(),
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids())}

    last, waited = [0.0], [0.0]

    def on_epoch(info: dict[str, Any]) -> None:  # per-epoch losses, for the live view
        # Each report is a round trip to the driver (Tune's function trainable waits until it is taken):
        # at most one per PROGRESS_EVERY_S, so short epochs do not pay it every time
        now = time.perf_counter()
        if now - last[0] < PROGRESS_EVERY_S and info.get("epoch") != info.get("epochs"):
            return
        tune.report({"fold_key": keys[int(info.get("fold", 0))],
                     **{k: v for k, v in info.items() if isinstance(v, (int, float))}})
        last[0] = time.perf_counter()
        waited[0] += last[0] - now

    t_setup = time.perf_counter() - t_entered
    t0 = time.perf_counter()
    job = fjobs[0]
    if len(fjobs) > 1:
        results = run_folds(fjobs, datasets[job.data], prefix=prefixes.get(job.prefix), on_epoch=on_epoch,
                            threads=job.threads)
    else:
        results = [run_fold(job.trial, datasets[job.data], job.subject, prefix=prefixes.get(job.prefix),
                            on_epoch=on_epoch, threads=job.threads,
                            test_data=datasets[job.test_data] if job.test_data else None,
                            test_prefix=prefixes.get(job.test_prefix))]
    t_fold = (time.perf_counter() - t0) / len(results)
    from model.metrics import pooled_metrics  # heavy (sklearn): after the fold, already loaded by it
    from model.result import FoldResult

    # one report per fold, each with its own FinishedFold and `fold_key`: the driver stores and tracks each
    for key, result in zip(keys, results, strict=True):
        t0 = time.perf_counter()
        m = pooled_metrics([FoldResult.from_dict(result)], n_boot=1)  # this fold alone, for Tune's own table
        timing = {"entered": entered, "first_in_worker": first, "import_s": t_import, "setup_s": t_setup,
                  "fold_s": t_fold, "fold_total_s": result["timings"].get("total_s"),
                  "epoch_reports_s": waited[0]}
        if len(keys) > 1:
            timing["stacked_folds"] = len(keys)
        timing["report_s"] = time.perf_counter() - t0
        blob = FinishedFold(result=result, node=node, timings=timing).dumps()
        tune.report({RESULT_KEY: blob, "fold_key": key, "finished": 1, "fold_f1": m["f1"], "fold_acc": m["acc"],
                     "n_test": len(result["sample_ids"]), **node})
