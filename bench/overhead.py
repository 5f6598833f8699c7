"""What `microau-sweep run` costs on top of training: the same LOSO folds as a bare in-process loop and
through `run` (Ray Tune + MLflow), both wall times, their ratio, and where the difference goes.

    .venv/bin/python bench/overhead.py [--subjects 4 --per-subject 8] [--fold-seconds 30 | --epochs N]
        [--cpu-per-trial N] [--keep DIR] [--baseline-repo DIR]

Setup (not timed): a synthetic CASME II-layout set, prepared (DIS flow, Eulerian x3) into the sweep's
workdir cache, so neither side preprocesses. Model: `microau-tiny`, random weights, k = 1, batch 8;
epochs are calibrated so that one fold trains for about --fold-seconds on this machine (or given).

(a) bare: `model.loso` over every subject in this process, torch at every CPU's thread (what a plain
    script would do), after its imports.
(b) run: `python -m orchestrator.cli run SWEEP --json` in a subprocess (the whole command: interpreter,
    imports, Ray start, Tune, MLflow in the workdir's SQLite store, reports), the sweep asking for
    `resources.cpu` = --cpu-per-trial (default every CPU: one fold at a time at every thread, as (a)).

(c) the floor: Ray Tune alone in a new interpreter (embedded Ray, the same number of trials one at a time,
    each only importing torch, actors reused, shut down): what any Tune-based run pays on this machine.

The breakdown comes from `run --json`'s `timings` (orchestrator.execution.runner.RunTimings): per sweep the
phases (Ray start, MLflow set-up and close, frozen prefix, the object-store put of data and prefixes,
Tune's fit) and the command's own start-up (its wall minus the run's); per trial the driver's wall
(trial start -> result stored and tracked) against the fold itself, split into getting to the
trainable (actor start, fetching data and prefix), first imports, set-up, reporting, storing and
tracking. The table goes to stderr, one JSON object to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--per-subject", type=int, default=8)
    ap.add_argument("--fold-seconds", type=float, default=30.0, help="calibrate epochs to this fold time")
    ap.add_argument("--epochs", type=int, default=None, help="fixed epochs (no calibration)")
    ap.add_argument("--cpu-per-trial", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temp folder)")
    ap.add_argument("--baseline-repo", default=None,
                    help="also time (b) with the package of this checkout (e.g. an earlier commit in a `git "
                         "worktree`): its whole-command wall time, for a before/after")
    args = ap.parse_args()
    ncpu = os.cpu_count() or 1
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="microau-overhead-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        out = run(args, tmp, ncpu)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    _table(out)
    print(json.dumps(out, indent=1))


def run(args, tmp: Path, ncpu: int) -> dict:
    import torch
    import yaml

    from preprocessing.config import QUICK_PREPROCESS
    from preprocessing.synth import generate

    root = tmp / "casme2"
    if not root.exists():
        generate(root, layout="casme2", subjects=args.subjects, per_subject=args.per_subject, seed=0)
    threads = max(1, args.cpu_per_trial)
    doc = {"name": "overhead", "workdir": str(tmp / "wd"),
           "datasets": {"casme2": {"reader": "casme2", "root": str(root)}},
           "preprocessing": QUICK_PREPROCESS,
           "model": {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 1},
           "training": {"epochs": 1, "batch_size": 8, "threads": threads, "device": "cpu"},
           "resources": {"cpu": threads, "gpu": 0}, "retries": 0}
    from orchestrator.planning.data import prepare
    from orchestrator.spec.resolved import load_sweep

    sweep = tmp / "overhead.yaml"
    sweep.write_text(yaml.safe_dump(doc))
    spec = load_sweep(sweep)
    data = prepare(spec, "casme2", spec.trials[0].preprocessing, progress=False)  # cached for (b) too
    subjects = sorted(set(data.subjects))

    from model import compute_prefix, loso, train_fold

    torch.set_num_threads(ncpu)
    trial = spec.trials[0]
    epochs = args.epochs
    calibration = None
    if epochs is None:  # one short fold: seconds per epoch at these settings
        probe = 5
        prefix = compute_prefix(trial.model, data, trial.aus)
        r = train_fold(trial.with_training(epochs=probe, lr_step_epoch=probe, threads=ncpu), data, subjects[0],
                       prefix=prefix)
        per_epoch = r.timings["train_s"] / probe
        epochs = max(1, round(args.fold_seconds / per_epoch))
        calibration = {"probe_epochs": probe, "s_per_epoch": round(per_epoch, 4)}
    lr_step = max(1, (3 * epochs) // 4)
    trial = trial.with_training(epochs=epochs, lr_step_epoch=lr_step, threads=ncpu)

    # (a) the bare loop: every fold in this process, one after the other
    t0 = time.perf_counter()
    bare_folds = loso(trial, data)
    bare = time.perf_counter() - t0

    # (b) the same folds through `microau-sweep run` (a fresh workdir store: everything trains)
    doc["training"].update(epochs=epochs, lr_step_epoch=lr_step)
    sweep.write_text(yaml.safe_dump(doc))
    swept, doc_out = run_command(sweep, tmp, REPO)
    timings = doc_out["timings"]
    stored = {t["fold"]: t for t in timings["trials"]}
    baseline = None
    if args.baseline_repo:
        base_wall, base_doc = run_command(sweep, tmp, args.baseline_repo)
        base_trials = list(base_doc["timings"]["trials"])
        baseline = {"repo": str(args.baseline_repo), "run_s": round(base_wall, 2),
                    "per_sweep": per_sweep(base_doc["timings"], base_wall), "per_trial": per_trial(base_trials),
                    "fold_s": round(sum(t.get("fold_total_s", 0.0) for t in base_trials), 2)}
    floor = tune_floor(len(subjects), threads, tmp)

    bare_fold_s = [f.timings["total_s"] for f in bare_folds]
    out = {"machine": {"cpus": ncpu, "load_average": list(os.getloadavg())},
           "folds": len(subjects), "samples": len(data.sample_ids), "epochs": epochs, "calibration": calibration,
           "cpu_per_trial": threads, "torch_threads": threads,
           "bare_s": round(bare, 2), "run_s": round(swept, 2), "ratio": round(swept / bare, 3),
           "bare_fold_s": [round(x, 2) for x in bare_fold_s],
           "run_fold_s": [round(t.get("fold_total_s", float("nan")), 2) for t in stored.values()]}
    if baseline:
        out["baseline"] = {**baseline, "ratio": round(baseline["run_s"] / bare, 3)}
    out["tune_floor"] = {**floor, "ratio_if_run_cost_only_this": round((bare + floor["wall_s"]) / bare, 3)}
    out["per_sweep"] = per_sweep(timings, swept)
    out["per_trial"] = per_trial(list(stored.values()))
    out["unexplained_s"] = round(swept - bare - out["per_sweep"]["fixed_total_s"]
                                 - sum(t.get("fixed_s", 0) for t in stored.values())
                                 - (sum(out["run_fold_s"]) - sum(bare_fold_s)), 2)
    return out


def run_command(sweep: Path, tmp: Path, repo) -> tuple:
    """`python -m orchestrator.cli run SWEEP --json` with `repo`'s package, on a fresh workdir store (the
    prepared data and prefix caches kept): (wall seconds, its JSON)."""
    for sub in ("results", "mlflow.db", "mlartifacts", "reports", "ray_results", "datasets.json", "sweeps.json",
                "run.lock"):
        p = tmp / "wd" / sub
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    path = os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(sweep), "--json"], cwd=tmp,
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run ({repo}) failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout)


FLOOR = """
import os, sys, time
t0 = time.perf_counter()
import ray
from ray import tune
n, cpus, temp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
def trainable(config):
    import torch  # what any fold's worker imports first
    tune.report({"done": 1})
ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _temp_dir=temp,
         _system_config={"prestart_worker_first_driver": False})
t1 = time.perf_counter()
tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": cpus}), param_space={"i": tune.grid_search(list(range(n)))},
                   tune_config=tune.TuneConfig(reuse_actors=True),
                   run_config=tune.RunConfig(storage_path=os.path.join(temp, "results"), verbose=0))
tuner.fit()
t2 = time.perf_counter()
ray.shutdown()
t3 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f}")
"""


def tune_floor(n: int, cpus: int, tmp: Path) -> dict:
    """What Ray Tune itself costs for `n` trials that do nothing but import torch (one at a time at `cpus`
    CPUs, actors reused as `run` does), in a new interpreter: import and start an embedded Ray, fit, shut
    down. No tracking, no store, no data: the part of `run`'s fixed cost that any Tune-based run pays here."""
    import tempfile

    temp = tempfile.mkdtemp(prefix="floor-")
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", FLOOR, str(n), str(cpus), temp], capture_output=True, text=True,
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"the Tune floor run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    start, fit, stop = (float(x) for x in proc.stdout.split()[-3:])
    return {"trials": n, "wall_s": round(wall, 2), "ray_import_and_start_s": start, "fit_s": fit, "shutdown_s": stop}


def per_sweep(t: dict, swept: float) -> dict:
    """The run's fixed costs once per sweep; Tune's own share is fit_s minus the trials' walls when the
    trials ran one at a time (it is the scheduling between and around them)."""
    ph = t["phases"]
    walls = [x.get("wall_s", 0.0) for x in t["trials"]]
    out = {"command_startup_and_exit_s": round(swept - t["total_s"], 2), **ph}
    out["tune_outside_trials_s"] = round(ph.get("fit_s", 0.0) - sum(walls), 2)  # sequential trials only
    out["fixed_total_s"] = round(swept - ph.get("fit_s", 0.0) + out["tune_outside_trials_s"], 2)
    return out


def per_trial(trials) -> dict:
    keys = ("wall_s", "fixed_s", "to_trainable_s", "import_s", "setup_s", "report_s", "store_and_track_s",
            "fold_s", "fold_total_s")
    first = [t for t in trials if t.get("first_in_worker")]
    warm = [t for t in trials if not t.get("first_in_worker")]

    def summary(rows):
        return {k: round(statistics.median([r[k] for r in rows if k in r]), 3) for k in keys
                if any(k in r for r in rows)} if rows else None

    return {"first_in_worker": summary(first), "warm_median": summary(warm), "n_first": len(first),
            "n_warm": len(warm)}


def _table(out: dict) -> None:
    w = sys.stderr.write
    w(f"{out['folds']} folds x {out['epochs']} epochs, {out['machine']['cpus']} CPUs (load average "
      f"{out['machine']['load_average'][0]:.2f}), {out['cpu_per_trial']} CPU(s) per trial\n")
    w(f"  bare loop           {out['bare_s']:8.2f} s\n  microau-sweep run   {out['run_s']:8.2f} s   ratio "
      f"{out['ratio']:.3f}\n")
    w("per sweep (s):\n")
    for k, v in out["per_sweep"].items():
        w(f"  {k:30s} {v}\n")
    for name in ("first_in_worker", "warm_median"):
        if out["per_trial"][name]:
            w(f"per trial, {name} (s):\n")
            for k, v in out["per_trial"][name].items():
                w(f"  {k:30s} {v}\n")
    w(f"unexplained: {out['unexplained_s']} s\n")
    f = out["tune_floor"]
    w(f"Ray Tune alone ({f['trials']} trials importing torch): {f['wall_s']} s (start {f['ray_import_and_start_s']}, "
      f"fit {f['fit_s']}, shutdown {f['shutdown_s']}); bare + it: {f['ratio_if_run_cost_only_this']}\n")
    if out.get("baseline"):
        b = out["baseline"]
        w(f"baseline run ({b['repo']}): {b['run_s']} s, ratio {b['ratio']}; its fixed per sweep "
          f"{b['per_sweep']['fixed_total_s']} s, folds {b['fold_s']} s\n")


if __name__ == "__main__":
    main()
