"""A quick check of a GPU machine (bench/gpu_check.sh runs it): one fold at the paper's settings on the GPU,
bf16 against fp32, and four folds packed on the GPU at `resources.gpu: 0.25`. No download: the data is
synthetic and the backbone's weights are random (speed does not depend on them).

    bench/gpu_check.sh            # CUDA: 26 subjects x 10 samples, ViT-B-32 (k = 3), 80 epochs, batch 8
    bench/gpu_check.sh --tiny     # CPU, seconds: the same code path with microau-tiny, 2 epochs, 4 x 3
                                  # samples, a logical GPU for the packing
                                  # (what tests/integration/test_gpu_check.py runs)
    bench/gpu_check.sh --folds-per-trial 8 --compile   # also 8 stacked folds, and the compiled step

Steps (each timed): generate a synthetic CASME II-layout set and prepare it (DIS flow, Eulerian x3: the
GPU figures do not depend on the flow method); the dense matmul rate of the device (bf16 8192^3 on CUDA,
fp32 on CPU); the FLOPs of one cached training step (torch's FlopCounterMode, forward + backward); one
fold in this process (`orchestrator.execution.trainable.run_fold`, what a trial runs) at `precision: auto` (bf16 on
CUDA): step time, fold time, achieved TFLOP/s against the matmul rate, peak GPU memory; the same fold
for a few epochs in fp32 and in auto precision: the largest difference in P(active) and the step-time
ratio; then `run_sweep` on four folds at `resources: {cpu: C, gpu: 0.25}` (Ray Tune, MLflow): whether
all four ran at once, the packed span against four single folds (the gain), peak device memory.
Progress goes to stderr, one JSON object to stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU-sized settings (tests)")
    ap.add_argument("--workdir", default=None, help="keep everything here (default: a temp folder)")
    ap.add_argument("--compare-epochs", type=int, default=None, help="epochs of the fp32 / auto comparison")
    ap.add_argument("--folds-per-trial", type=int, default=1, metavar="K",
                    help="also train K folds as one stacked model in this process (model.stacked.train_folds): "
                         "fold-steps/s against the single fold, largest difference in P(active) of its first fold")
    ap.add_argument("--compile", action="store_true",
                    help="also train the single fold with training.compile: true: compile time, step time, "
                         "largest difference in P(active) against the eager fold")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        out = check(work, args)
    else:
        with tempfile.TemporaryDirectory(prefix="microau-gpu-check-") as tmp:
            out = check(Path(tmp), args)
    out["wall_s"] = round(time.perf_counter() - T0, 1)
    print(json.dumps(out, indent=1))


def settings(tiny: bool, cuda: bool) -> dict:
    ncpu = os.cpu_count() or 1
    if tiny:
        return {"subjects": 4, "per_subject": 3, "arch": "microau-tiny", "k": 1, "epochs": 2, "lr_step": 1,
                "compare_epochs": 1, "cpu_per_fold": 1}
    return {"subjects": 26, "per_subject": 10, "arch": "ViT-B-32", "k": 3, "epochs": 80, "lr_step": 40,
            "compare_epochs": 5, "cpu_per_fold": max(1, min(4, ncpu // 4)) if cuda else 1}


def check(work: Path, args) -> dict:
    import torch
    import yaml

    cuda = torch.cuda.is_available()
    s = settings(args.tiny, cuda)
    if args.compare_epochs:
        s["compare_epochs"] = args.compare_epochs
    out = {"mode": "tiny" if args.tiny else "paper", "settings": s, "env": env_info(cuda)}
    if not cuda and not args.tiny:
        say("no CUDA device: use --tiny on a CPU machine")
        out["error"] = "no CUDA device"
        return out
    device = "cuda" if cuda else "cpu"

    # 1. data
    from preprocessing.config import QUICK_PREPROCESS
    from preprocessing.synth import generate

    root = work / "casme2"
    t = time.perf_counter()
    if not root.exists():
        generate(root, layout="casme2", subjects=s["subjects"], per_subject=s["per_subject"], seed=0)
    out["generate_s"] = round(time.perf_counter() - t, 1)
    say(f"generated {s['subjects'] * s['per_subject']} samples in {out['generate_s']} s")

    import ray

    t = time.perf_counter()
    logical_gpu = not cuda  # CPU: a logical GPU, so that `gpu: 0.25` schedules as on a GPU machine
    from orchestrator.execution.ray_session import start_ray  # a Ray of its own, whatever else runs here

    start_ray(work / "ray", num_cpus=max(4, os.cpu_count() or 1), num_gpus=1 if logical_gpu else None,
              include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    out["ray_start_s"] = round(time.perf_counter() - t, 1)
    try:
        doc = {"name": "gpu-check", "workdir": str(work / "wd"),
               "datasets": {"casme2": {"reader": "casme2", "root": str(root),
                                       "subjects": [f"sub{i:02d}" for i in range(1, 5)]}},
               "preprocessing": QUICK_PREPROCESS,
               "model": {"arch": s["arch"], "pretrained": "none", "trainable_blocks": s["k"]},
               "training": {"epochs": s["epochs"], "lr_step_epoch": s["lr_step"], "device": "auto",
                            "precision": "auto"},
               "resources": {"cpu": s["cpu_per_fold"], "gpu": 0.25}, "retries": 0}
        sweep = work / "gpu-check.yaml"
        sweep.write_text(yaml.safe_dump(doc))
        from orchestrator.execution.parallel import RaySamples
        from orchestrator.planning.data import prepare
        from orchestrator.spec.resolved import load_sweep

        spec = load_sweep(sweep)
        trial = spec.trials[0]
        t = time.perf_counter()
        mapper = None if args.tiny else RaySamples(lambda: None)  # --tiny: 12 samples, in this process
        data = prepare(spec, "casme2", trial.preprocessing, progress=False, map_samples=mapper)
        out["prepare_s"] = round(time.perf_counter() - t, 1)
        out["samples"] = len(data.sample_ids)
        say(f"prepared {out['samples']} samples in {out['prepare_s']} s")

        # 2. the device's matmul rate and the FLOPs of one training step
        out["matmul"] = matmul_rate(device)
        say(f"matmul {out['matmul']}")
        from orchestrator.execution.trainable import prefix_for, run_fold

        t = time.perf_counter()
        prefix = prefix_for(trial, data, spec.paths.cache, device=device)
        out["prefix_s"] = round(time.perf_counter() - t, 1)
        step_flops = count_step_flops(trial, data, prefix, device)

        # 3. one fold in this process at the paper's settings
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        one = run_fold(trial, data, "sub01", prefix=prefix)
        fold_wall = time.perf_counter() - t
        steps = train_steps(one["n_train"], trial.training.batch_size) * trial.training.epochs
        train_s = one["timings"]["train_s"]
        achieved = step_flops * steps / train_s
        out["single_fold"] = {
            "subject": "sub01", "precision": one["extras"]["precision"], "device": one["extras"]["device"],
            "n_train": one["n_train"], "steps": steps, "fold_s": round(one["timings"]["total_s"], 2),
            "wall_s": round(fold_wall, 2), "train_s": round(train_s, 2), "step_ms": round(1000 * train_s / steps, 2),
            "step_gflop": round(step_flops / 1e9, 2), "achieved_tflops": round(achieved / 1e12, 3),
            "share_of_matmul_rate": round(achieved / 1e12 / out["matmul"]["tflops"], 3),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None}
        say(f"one fold: {out['single_fold']}")

        # 4. auto (bf16 on CUDA) against fp32, a few epochs of the same fold
        out["precision_check"] = precision_check(trial, data, prefix, s["compare_epochs"])
        say(f"precision: {out['precision_check']}")

        # 4b. optional: K stacked folds, and the compiled step
        if args.folds_per_trial > 1:
            out["stacked"] = stacked_check(trial, data, prefix, args.folds_per_trial, one, cuda)
            say(f"stacked: {out['stacked']}")
        if args.compile:
            out["compiled"] = compiled_check(trial, data, prefix, one, cuda)
            say(f"compiled: {out['compiled']}")

        # 5. four folds at gpu: 0.25 through the sweep runner (this process's cached GPU memory freed first)
        if cuda:
            torch.cuda.empty_cache()
        out["packed"] = packed(spec, out["single_fold"]["fold_s"], cuda, figures=not args.tiny)
        say(f"packed: {out['packed']}")
    finally:
        ray.shutdown()
    return out


def env_info(cuda: bool) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count()}
    if cuda:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    bf16=torch.cuda.is_bf16_supported(), gpus=torch.cuda.device_count())
    return info


def matmul_rate(device: str, reps: int = 10) -> dict:
    """Best of `reps` dense matmuls: bf16 8192^3 on CUDA, fp32 1024^3 on CPU."""
    import torch

    if device == "cuda":
        n, dtype = 8192, torch.bfloat16
    else:
        n, dtype = 1024, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(reps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": round(2 * n ** 3 / best / 1e12, 3)}


def train_steps(n_train: int, batch: int) -> int:
    """Optimiser steps per epoch (model.train.batches: a last batch of one joins the one before)."""
    full, rest = divmod(n_train, batch)
    return full + (1 if rest > 1 else 0) if full else 1


def count_step_flops(trial, data, prefix, device: str) -> float:
    """FLOPs of one training step on the cached prefix (forward + backward), batch = training.batch_size."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from model import losses
    from model.lsi import au_token_indices, landmark_groups, pad_token_indices
    from model.net import MicroAUCLIP, TextTensors, as_tensor
    from model.train import _optimizer, step_losses

    mcfg, tcfg = trial.model, trial.training
    model = MicroAUCLIP(mcfg, len(trial.aus), prefix).to(device)
    opt = _optimizer(model, tcfg)
    b = torch.arange(tcfg.batch_size, device=device)
    tok = torch.from_numpy(pad_token_indices(
        au_token_indices(data.landmarks, landmark_groups(trial.aus, mcfg.landmark_groups), prefix.grid,
                         prefix.image, data.sample_ids))).to(device)
    y = torch.from_numpy(data.labels(trial.aus).astype(np.int64)).to(device)
    vis = as_tensor(prefix.visual, device)
    au_txt, glob = TextTensors(prefix.au_texts, device), TextTensors(prefix.global_texts, device)
    gidx = as_tensor(prefix.global_index, device)
    with FlopCounterMode(display=False) as fc:
        terms = step_losses(model, mcfg, vis[b], tok[b], y[b], au_txt, glob, gidx[b])
        loss = losses.total_loss(terms["multitask"], terms["contrastive"], terms["gd"], 0.6, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
    return float(fc.get_total_flops())


def precision_check(trial, data, prefix, epochs: int) -> dict:
    import numpy as np
    import torch

    from orchestrator.execution.trainable import run_fold

    # auto is bf16 on CUDA; on a CPU (--tiny) bf16 is asked for, so that the autocast path runs there too
    other = "auto" if torch.cuda.is_available() else "bf16"
    out = {"epochs": epochs, "against": other}
    res = {}
    for p in ("fp32", other):
        t = trial.with_training(epochs=epochs, lr_step_epoch=max(1, epochs), precision=p)
        res[p] = run_fold(t, data, "sub01", prefix=prefix)
        out[f"{p}_train_s"] = round(res[p]["timings"]["train_s"], 3)
    a, b = np.array(res["fp32"]["probs"]), np.array(res[other]["probs"])
    out["ran_as"] = res[other]["extras"]["precision"]
    out["max_abs_prob_diff"] = round(float(np.abs(a - b).max()), 5)
    out["same_decisions"] = float(((a > 0.5) == (b > 0.5)).mean())
    out["speedup_over_fp32"] = round(out["fp32_train_s"] / max(out[f"{other}_train_s"], 1e-9), 2)
    return out


def stacked_check(trial, data, prefix, k: int, one: dict, cuda: bool) -> dict:
    """K folds of the trial trained as one stacked model (subjects cycled, the seed raised on each cycle):
    train time, fold-steps/s against the single fold's, and fold 0 (sub01, the trial's seed) against it."""
    import numpy as np
    import torch

    from model.stacked import train_folds

    subjects = sorted(set(map(str, data.subjects)))
    trials = [trial.model_copy(update={"seed": trial.seed + i // len(subjects)}) for i in range(k)]
    subs = [subjects[i % len(subjects)] for i in range(k)]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    res = train_folds(trials, data, subs, prefix=prefix)
    wall = time.perf_counter() - t
    steps = sum(train_steps(r.n_train, trial.training.batch_size) for r in res) * trial.training.epochs
    train_s = res[0].timings["train_s"]
    single = train_steps(one["n_train"], trial.training.batch_size) * trial.training.epochs
    return {"folds": k, "wall_s": round(wall, 2), "train_s": round(train_s, 2), "fold_steps": steps,
            "fold_steps_per_s": round(steps / train_s, 2),
            "single_fold_steps_per_s": round(single / one["timings"]["train_s"], 2),
            "gain": round(steps / train_s / (single / one["timings"]["train_s"]), 2),
            "max_abs_prob_diff_fold0": round(float(np.abs(res[0].probs - np.array(one["probs"])).max()), 6),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None}


def compiled_check(trial, data, prefix, one: dict, cuda: bool) -> dict:
    """The single fold again with training.compile: true ('reduce-overhead' on CUDA): the first epoch
    (compilation included), the later epochs' step time, and P(active) against the eager fold."""
    import numpy as np

    from orchestrator.execution.trainable import run_fold

    seconds = []
    t = time.perf_counter()
    res = run_fold(trial.with_training(compile=True), data, "sub01", prefix=prefix,
                   on_epoch=lambda info: seconds.append(info["seconds"]))
    wall = time.perf_counter() - t
    per_epoch = train_steps(res["n_train"], trial.training.batch_size)
    later = sorted(seconds[1:])[len(seconds[1:]) // 2] if len(seconds) > 1 else float("nan")
    eager_step = one["timings"]["train_s"] / (per_epoch * trial.training.epochs)
    return {"wall_s": round(wall, 2), "first_epoch_s": round(seconds[0], 2) if seconds else None,
            "step_ms": round(1000 * later / per_epoch, 2), "eager_step_ms": round(1000 * eager_step, 2),
            "max_abs_prob_diff": round(float(np.abs(np.array(res["probs"]) - np.array(one["probs"])).max()), 6)}


def packed(spec, single_fold_s: float, cuda: bool, figures: bool = True) -> dict:
    """`run_sweep` on the sweep's four folds at gpu: 0.25; peak device memory sampled while it runs.
    `figures`: draw the figures at the end of the run as `run` does (--tiny: not, seconds of matplotlib on
    a CPU that measure nothing here; the span and fold times are taken before them either way)."""
    from orchestrator.execution.runner import run_sweep

    peak = [0.0]
    stop = threading.Event()

    def sample():
        import torch
        while not stop.is_set():
            free, total = torch.cuda.mem_get_info()
            peak[0] = max(peak[0], (total - free) / 2**30)
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True) if cuda else None
    if sampler:
        sampler.start()
    t = time.perf_counter()
    try:
        outcome = run_sweep(spec, quiet=True, progress=False, figures=figures)
    finally:
        stop.set()
        if sampler:
            sampler.join()
    wall = time.perf_counter() - t
    trials = [x for x in outcome.timings["trials"] if "entered" in x and "fold_s" in x]
    starts = [x["entered"] for x in trials]
    ends = [x["entered"] + x["fold_s"] for x in trials]
    span = max(ends) - min(starts) if trials else float("nan")
    fold_s = [x["fold_s"] for x in trials]
    return {"folds": outcome.trained, "failed": len(outcome.failed), "run_wall_s": round(wall, 1),
            "all_four_at_once": len(trials) == 4 and max(starts) < min(ends),
            "gpu_ids": sorted({str(r["meta"].get("gpu_ids")) for r in _records(spec)}),
            "span_s": round(span, 2), "fold_s": [round(x, 2) for x in fold_s],
            "gain_over_one_at_a_time": round(4 * single_fold_s / span, 2) if trials else None,
            "slowdown_per_fold": round(sorted(fold_s)[len(fold_s) // 2] / single_fold_s, 2) if fold_s else None,
            "peak_device_memory_gib": round(peak[0], 2) if cuda else None,
            "phases": outcome.timings["phases"]}


def _records(spec):
    from orchestrator.planning.store import ResultsStore

    store = ResultsStore(spec.paths.results)
    return [store.get(k) for k in store.keys()]


if __name__ == "__main__":
    main()
