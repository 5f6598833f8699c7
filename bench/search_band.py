"""The learning-rate band of the search's synthetic task (sweeps/search_quickstart.yaml,
tests/integration/test_search.py): pooled F1 of every LOSO fold of one point per `training.lr_head`, in this
process (no Ray), on a generated CASME II-layout set of 5 subjects x 8 samples (seed 0), AUs 1, 2, 4, 12,
the tiny random-init backbone kept frozen (trainable_blocks 0, its prefix cached), 10 epochs of SGD.

    python bench/search_band.py                      # the lr_head values below
    python bench/search_band.py --lr 1e-3,1e-2       # others

Prints one JSON object on stdout: {lr_head: {f1, acc, seconds}} and the settings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import model._torchvision_guard  # noqa: F401 - before open_clip

LRS = "1e-5,3e-4,1e-3,2e-3,5e-3,1e-2,3e-2,5e-2,1e-1,1"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", default=LRS, help="lr_head values, comma-separated")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    from model import cached_prefix, loso
    from model.metrics import pooled_metrics
    from orchestrator.spec.schema import SweepSpec
    from preprocessing import prepare_dataset
    from preprocessing.config import QUICK_PREPROCESS, PreprocessConfig
    from preprocessing.synth import generate

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="search-band-"))
    root = generate(tmp / "data", "casme2", 5, 8, 0)
    data = prepare_dataset("casme2", root, PreprocessConfig.model_validate(QUICK_PREPROCESS), tmp / "cache",
                           progress=False)
    out = {}
    for lr in [float(x) for x in args.lr.split(",")]:
        spec = SweepSpec.model_validate({
            "name": "band", "datasets": {"c": {"reader": "casme2", "root": str(root), "aus": [1, 2, 4, 12]}},
            "preprocessing": QUICK_PREPROCESS,
            "model": {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 0},
            "training": {"epochs": args.epochs, "batch_size": 8, "lr_head": lr, "lr_step_epoch": 100, "threads": 1}})
        trial = spec.expand(spec.points())[0]
        prefix = cached_prefix(trial.model, data, trial.aus, tmp / "cache", "cpu")
        t = time.perf_counter()
        m = pooled_metrics(loso(trial, data, prefix=prefix), n_boot=1)
        out[f"{lr:g}"] = {"f1": round(m["f1"], 3), "acc": round(m["acc"], 3),
                          "seconds": round(time.perf_counter() - t, 1)}
        print(f"lr_head {lr:g}: F1 {m['f1']:.3f}  ACC {m['acc']:.3f}", file=sys.stderr, flush=True)
    print(json.dumps({"subjects": 5, "per_subject": 8, "epochs": args.epochs, "lr_head": out}))


if __name__ == "__main__":
    main()
