"""Training-step time of Micro-AU CLIP with the frozen prefix cached vs recomputed every step.

    .venv/bin/python bench/step_time.py [--json] [--arch ViT-B-32] [--batch 8] [--k 3] [--steps 10] [--threads 2]

"cached"   : what train_fold does - visual and text tails only (blocks L-k+1..L), on the cached prefix,
             text context truncated to the longest prompt's end-of-text.
"uncached" : the same step, but the frozen blocks run every step (under no_grad, as a plain fine-tuning
             loop would) and the text runs on the full 77-token context.
Both include the LSI/GSD/heads forward, all Eq. 12 losses and the SGD update. Random backbone weights
(no download needed); timing does not depend on the weights.

FLOP floor: torch's FlopCounterMode counts the cached step's FLOPs (forward + backward); divided by this
machine's measured dense-matmul rate (a 1024^3 fp32 matmul at the same thread count) it gives the time
a step could take at best, and times the steps of one paper-setting CASME II fold (229 training samples
-> 29 steps x 80 epochs) the floor of one fold's training.

Compute operations (`compute_ops_per_step`, with its parts `forward`, `backward`, `optimizer`): the ATen
operations one cached step dispatches, counted with a TorchDispatchMode on a step after the warm-up
(momentum buffers exist), view-like operations excluded (bench/opcount.py lists them). On a GPU in eager
mode each is a kernel launch. The output is one JSON object (`--json` is accepted and changes nothing).

--compile: the cached step runs through torch.compile (`training.compile: true`): `compile.first_step_s` is
the first step (tracing and compiling included), the warm-up steps absorb any recompilation, and the
timed steps are the compiled ones. Operations and FLOPs are counted on the eager step either way.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.opcount import VIEW_OPS, OpCounter
from model import backbone, compute_prefix, losses
from model.config import ModelConfig, TrainConfig
from model.lsi import au_token_indices, landmark_groups, pad_token_indices
from model.net import MicroAUCLIP, TextTensors
from model.prefix import TextGroup
from model.train import _optimizer, step_function, step_losses
from preprocessing.dataset import PreparedDataset

AUS = [1, 2, 4, 7, 12, 14, 15, 17]


def fake(n: int, seed: int = 0) -> PreparedDataset:
    rng = np.random.default_rng(seed)
    lms = rng.uniform(20, 200, size=(n, 68, 2)).astype(np.float32)
    sets = [sorted(rng.choice(AUS, size=rng.integers(0, 3), replace=False).tolist()) for _ in range(n)]
    return PreparedDataset(reader="casme2", key=f"bench-{n}", sample_ids=[f"s{i}" for i in range(n)],
                           subjects=[f"sub{i % 4}" for i in range(n)],
                           flow=rng.random((n, 3, 224, 224), dtype=np.float32), landmarks=lms, au_sets=sets,
                           emotions=["others"] * n, mer=[None] * n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="the output is one JSON object either way")
    ap.add_argument("--compile", action="store_true", help="the cached step through torch.compile (training.compile)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    mcfg = ModelConfig(arch=args.arch, pretrained="none", trainable_blocks=args.k)
    tcfg = TrainConfig(alpha=0.6, beta=1.0, device="cpu")
    data = fake(args.batch * 2)
    t0 = time.perf_counter()
    prefix = compute_prefix(mcfg, data, AUS)
    t_prefix = time.perf_counter() - t0
    clip, _ = backbone.load_clip(mcfg.arch, mcfg.pretrained)
    torch.manual_seed(1)
    model = MicroAUCLIP(mcfg, len(AUS), prefix)
    opt = _optimizer(model, tcfg)
    tok = torch.from_numpy(pad_token_indices(au_token_indices(data.landmarks, landmark_groups(AUS), prefix.grid,
                                                               prefix.image)))
    y = torch.from_numpy(data.labels(AUS).astype(np.int64))
    flow = torch.from_numpy(data.flow)
    vis = torch.from_numpy(prefix.visual)
    au_cached = TextTensors(prefix.au_texts, "cpu")
    glob = TextTensors(prefix.global_texts, "cpu")
    gidx = torch.from_numpy(prefix.global_index)
    # the uncached text: the frozen text blocks on the full 77-token context, recomputed every step
    full_ids = backbone.tokenize(mcfg.arch, prefix.au_texts.texts)

    dev = torch.device("cpu")
    eager = step_function(model, mcfg, au_cached, glob, {"alpha": 0.6, "beta": 1.0}, dev, "fp32")
    timed = step_function(model, mcfg, au_cached, glob, {"alpha": 0.6, "beta": 1.0}, dev, "fp32", args.compile)

    def step(cached: bool, i: int, counter: OpCounter | None = None, fn=timed) -> float:
        b = torch.arange(i * args.batch, (i + 1) * args.batch) % len(data)
        marks = []
        t = time.perf_counter()
        if cached:
            v, au_txt = vis[b], au_cached
        else:
            v = backbone.visual_prefix(clip, flow[b], args.k)
            h = backbone.text_prefix(clip, full_ids, args.k)
            au_txt = TextTensors(TextGroup(texts=[], ids=full_ids.numpy(), eot=prefix.au_texts.eot,
                                           hidden=h.numpy(), features=prefix.au_texts.features), "cpu")
        with counter or contextlib.nullcontext():
            marks.append(counter.mark() if counter else 0)
            if cached:  # what model.train.fit runs
                loss, _ = fn(v, tok[b], y[b], gidx[b])
            else:
                terms = step_losses(model, mcfg, v, tok[b], y[b], au_txt, glob, gidx[b])
                loss = losses.total_loss(terms["multitask"], terms["contrastive"], terms["gd"], 0.6, 1.0)
            marks.append(counter.mark() if counter else 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            marks.append(counter.mark() if counter else 0)
            opt.step()
            marks.append(counter.mark() if counter else 0)
        if counter is not None:
            counter.parts = {k: marks[i + 1] - marks[i] for i, k in enumerate(("forward", "backward", "optimizer"))}
        return time.perf_counter() - t

    out = {"arch": args.arch, "batch": args.batch, "k": args.k, "threads": args.threads, "compile": args.compile,
           "prefix_s_for_samples": [round(t_prefix, 3), len(data)],
           "text_context": {"cached": int(prefix.au_texts.ids.shape[1]), "uncached": int(full_ids.shape[1])}}
    for name, cached in (("uncached", False), ("cached", True)):
        times = [step(cached, i) for i in range(args.warmup + args.steps)]
        if cached and args.compile:
            out["compile"] = {"first_step_s": round(times[0], 2), "warmup_steps_s": [round(t, 2) for t in
                                                                                  times[:args.warmup]]}
        times = times[args.warmup:]
        out[f"{name}_step_ms"] = {"median": round(1000 * statistics.median(times), 1),
                                  "min": round(1000 * min(times), 1), "max": round(1000 * max(times), 1)}
    out["speedup"] = round(out["uncached_step_ms"]["median"] / out["cached_step_ms"]["median"], 2)

    counter = OpCounter()
    step(True, 0, counter, eager)  # after the warm-up: momentum buffers exist, as in every later step
    out["compute_ops_per_step"] = counter.total
    out["compute_ops"] = {**counter.parts, "views_not_counted": sum(counter.views.values()),
                          "view_ops": sorted(VIEW_OPS), "top": dict(counter.counts.most_common(12))}
    out["trainable_tensors"] = sum(1 for g in opt.param_groups for p in g["params"])

    with FlopCounterMode(display=False) as fc:  # one cached step, forward + backward
        step(True, 0, None, eager)
    flops = fc.get_total_flops()
    peak = matmul_gflops()
    fold_steps = math.ceil(229 / args.batch) * 80  # CASME II: 255 samples, ~26 held out, 80 epochs
    step_s = out["cached_step_ms"]["median"] / 1000
    out["flop_floor"] = {
        "cached_step_gflop": round(flops / 1e9, 3), "matmul_peak_gflops": round(peak, 1),
        "achieved_gflops": round(flops / 1e9 / step_s, 1),
        "efficiency": round(flops / 1e9 / step_s / peak, 3),
        "paper_fold_steps": fold_steps, "paper_fold_floor_s": round(fold_steps * flops / 1e9 / peak, 1),
        "paper_fold_measured_s": round(fold_steps * step_s, 1)}
    print(json.dumps(out, indent=1))


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    """This machine's dense fp32 matmul rate at the current thread count (best of `reps`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
