"""Stacked folds (model.stacked): compute operations per fold-step and CPU fold-steps per second for K folds
trained as one stacked model, against the plain (unstacked) step a single fold runs.

    .venv/bin/python bench/fold_stack.py [--arch microau-tiny] [--k 1] [--batch 8] [--ks 1,2,4,8] [--steps 10]
                                         [--warmup 2] [--threads 2]

For each K: K models of one config (seeds 1..K) stacked (`model.stacked.StackedFolds`), each fold with its
own batch of `batch` samples per step (every fold active: the regular step of an epoch). `ops_per_step` is
what one stacked step dispatches (forward + backward + the stacked SGD update; bench/opcount.py's count,
views excluded), `ops_per_fold_step` that / K; `fold_steps_per_s` is K x steps / time (median step
time). `unstacked` is `model.train.fit`'s step (`step_function` + foreach SGD) on the same data: what a
fold runs alone. Random backbone weights, synthetic data (bench/step_time.py's). One JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.opcount import OpCounter
from bench.step_time import AUS, fake
from model import compute_prefix
from model.config import ModelConfig, TrainConfig
from model.lsi import au_token_indices, landmark_groups, pad_token_indices
from model.net import MicroAUCLIP, TextTensors
from model.stacked import StackedFolds
from model.train import _optimizer, step_function


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="microau-tiny")
    ap.add_argument("--k", type=int, default=1, help="trainable blocks")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ks", default="1,2,4,8", help="numbers of stacked folds")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="the output is one JSON object either way")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    mcfg = ModelConfig(arch=args.arch, pretrained="none", trainable_blocks=args.k)
    tcfg = TrainConfig(alpha=0.6, beta=1.0, device="cpu")
    data = fake(args.batch * 2)
    prefix = compute_prefix(mcfg, data, AUS)
    dev = torch.device("cpu")
    tok = torch.from_numpy(pad_token_indices(au_token_indices(data.landmarks, landmark_groups(AUS), prefix.grid,
                                                               prefix.image)))
    y = torch.from_numpy(data.labels(AUS).astype(np.int64))
    vis = torch.from_numpy(prefix.visual)
    gidx = torch.from_numpy(prefix.global_index)
    au_txt, glob = TextTensors(prefix.au_texts, dev), TextTensors(prefix.global_texts, dev)
    n = len(data.sample_ids)

    def batch(i: int, fold: int) -> torch.Tensor:  # each fold its own samples
        return (torch.arange(args.batch) + i * args.batch + 3 * fold) % n

    out = {"arch": args.arch, "k": args.k, "batch": args.batch, "threads": args.threads, "steps": args.steps}

    # the plain step of one fold (model.train.fit)
    torch.manual_seed(1)
    model = MicroAUCLIP(mcfg, len(AUS), prefix)
    opt = _optimizer(model, tcfg)
    losses_of = step_function(model, mcfg, au_txt, glob, {"alpha": 0.6, "beta": 1.0}, dev, "fp32")

    def plain(i: int) -> float:
        b = batch(i, 0)
        t = time.perf_counter()
        loss, _ = losses_of(vis[b], tok[b], y[b], gidx[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    times = [plain(i) for i in range(args.warmup + args.steps)][args.warmup:]
    with OpCounter() as c:
        plain(0)
    med = statistics.median(times)
    out["unstacked"] = {"ops_per_fold_step": c.total, "step_ms": round(1000 * med, 2),
                        "fold_steps_per_s": round(1 / med, 2)}
    print(f"unstacked: {out['unstacked']}", file=sys.stderr)

    out["stacked"] = {}
    for k in (int(x) for x in args.ks.split(",")):
        trials = [_trial(mcfg, tcfg, seed) for seed in range(1, k + 1)]
        stack = StackedFolds(trials, prefix, au_txt, glob, dev)

        def step(i: int, stack=stack, k=k) -> float:
            idx = torch.stack([batch(i, f) for f in range(k)])
            t = time.perf_counter()
            stack.step(vis[idx], tok[idx], y[idx], gidx[idx])
            return time.perf_counter() - t

        times = [step(i) for i in range(args.warmup + args.steps)][args.warmup:]
        with OpCounter() as c:
            step(0)
        med = statistics.median(times)
        out["stacked"][k] = {"ops_per_step": c.total, "ops_per_fold_step": round(c.total / k, 1),
                             "step_ms": round(1000 * med, 2), "fold_steps_per_s": round(k / med, 2)}
        print(f"K={k}: {out['stacked'][k]}", file=sys.stderr)
    one = out["unstacked"]["fold_steps_per_s"]
    out["speedup_over_unstacked"] = {k: round(v["fold_steps_per_s"] / one, 2) for k, v in out["stacked"].items()}
    if 1 in out["stacked"]:
        s1 = out["stacked"][1]["fold_steps_per_s"]
        out["speedup_over_stacked_k1"] = {k: round(v["fold_steps_per_s"] / s1, 2) for k, v in out["stacked"].items()}
    print(json.dumps(out, indent=1))


def _trial(mcfg, tcfg, seed):
    from types import SimpleNamespace

    return SimpleNamespace(reader="casme2", aus=AUS, seed=seed, model=mcfg, training=tcfg)


if __name__ == "__main__":
    main()
