"""Preprocessing speed: samples per second per flow method and magnification, in-process and as Ray tasks
on 1..N CPUs, the cost of each stage of one sample, and a cache hit.

    .venv/bin/python bench/preprocess.py [--subjects 4 --per-subject 6] [--workers 1 2]
        [--flows tvl1 farneback dis] [--magnifications none eulerian learned] [--all-pairs] [--breakdown 8]
    .venv/bin/python bench/preprocess.py --casme2-size      # the issue's target: 26 x 10 samples, TV-L1,
                                                            # Eulerian x3, Ray tasks on every CPU

A synthetic CASME II-layout set (preprocessing.synth: 320x240 frames, a ~200-pixel face crop) is generated
in a temp folder; every measurement prepares it into a fresh cache. Modes:
- `serial`: in this process, OpenCV at its default threads (what `preprocess --workers 1` and `fold` do);
- `ray_N`: `orchestrator.execution.parallel.RaySamples` on a local Ray of N CPUs, one sample per task and CPU at one
  OpenCV thread (what `run` and `preprocess` do). Ray's start and the first sample of each worker (imports,
  dlib's model) are timed apart (`ray_start_s`, `worker_warmup_s`); the per-config walls are warm.
`learned` magnification runs the network with random weights: its own time does not depend on them, but
the flow computed on its (meaningless) output does, so TV-L1 after it is not what real weights give.
The table goes to stderr, one JSON object to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--per-subject", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--flows", nargs="+", default=["tvl1", "farneback", "dis"])
    ap.add_argument("--magnifications", nargs="+", default=["none", "eulerian", "learned"])
    ap.add_argument("--all-pairs", action="store_true",
                    help="learned magnification with every flow method too (default: with the first flow only; "
                         "its cost does not depend on the flow)")
    ap.add_argument("--breakdown", type=int, default=8, help="samples timed stage by stage (0: none)")
    ap.add_argument("--no-serial", action="store_true", help="skip the in-process mode")
    ap.add_argument("--casme2-size", action="store_true",
                    help="26 subjects x 10 samples, tvl1 + eulerian x3, Ray on every CPU, cold (Ray start and "
                         "worker start included): the issue's 2-minute target")
    args = ap.parse_args()
    if args.casme2_size:
        args.subjects, args.per_subject = 26, 10
        args.flows, args.magnifications = ["tvl1"], ["eulerian"]
        args.workers, args.breakdown, args.no_serial = [os.cpu_count() or 1], 0, True

    from preprocessing.synth import generate

    out = {"machine": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
           "samples": args.subjects * args.per_subject, "frame_size": [320, 240]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        root = generate(tmp / "casme2", layout="casme2", subjects=args.subjects, per_subject=args.per_subject,
                        seed=0)
        out["generate_s"] = round(time.perf_counter() - t0, 2)
        weights = _random_magnet(tmp) if "learned" in args.magnifications else None
        configs = [(f, m) for f in args.flows for m in args.magnifications
                   if m != "learned" or args.all_pairs or f == args.flows[0]]
        if args.breakdown:
            out["breakdown_s_per_sample"] = breakdown(root, args.breakdown, args.flows, args.magnifications, weights)
        runs = []
        if not args.no_serial:
            for flow, m in configs:
                runs.append(_timed_prepare(root, tmp, flow, m, weights, "serial", None))
        for n in args.workers:
            runs.extend(_ray_runs(root, tmp, configs, weights, n, cold=args.casme2_size))
        out["runs"] = runs
        if not args.casme2_size:  # a cache hit of the first config
            flow, m = configs[0]
            cache = tmp / "hit"
            _prepare(root, cache, flow, m, weights, None)
            t0 = time.perf_counter()
            stats = {}
            _prepare(root, cache, flow, m, weights, None, stats)
            assert stats["cache_hit"]
            out["cache_hit_s"] = round(time.perf_counter() - t0, 3)
    if args.casme2_size:
        r = runs[0]
        out["target"] = {"seconds": r["wall_s"], "seconds_for_255": round(r["wall_s"] * 255 / out["samples"], 1),
                         "goal_s": 120}
    _table(out)
    print(json.dumps(out, indent=1))


def _cfg(flow, mag, weights):
    from preprocessing.config import PreprocessConfig

    m = {"method": mag, "factor": 3.0}
    if mag == "learned":
        m["weights"] = str(weights)
    return PreprocessConfig.model_validate({"flow": flow, "magnification": m})


def _prepare(root, cache, flow, mag, weights, mapper, stats=None):
    from preprocessing import prepare_dataset

    return prepare_dataset("casme2", root, _cfg(flow, mag, weights), cache, progress=False, map_samples=mapper,
                           stats=stats)


def _timed_prepare(root, tmp, flow, mag, weights, mode, mapper):
    cache = Path(tempfile.mkdtemp(dir=tmp, prefix="cache-"))
    stats = {}
    t0 = time.perf_counter()
    data = _prepare(root, cache, flow, mag, weights, mapper, stats)
    wall = time.perf_counter() - t0
    return {"mode": mode, "flow": flow, "magnification": mag, "samples": len(data.sample_ids),
            "wall_s": round(wall, 2), "samples_per_s": round(len(data.sample_ids) / wall, 3)}


def _ray_runs(root, tmp, configs, weights, n, cold=False):
    import logging

    import ray

    from orchestrator.execution.parallel import RaySamples

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    from orchestrator.execution.ray_session import start_ray  # a Ray of its own, whatever else runs here

    start_ray(None, num_cpus=n, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    start = time.perf_counter() - t0
    runs = []
    try:
        warm = 0.0
        if not cold:  # every worker imports the pipeline and loads dlib's model once: timed apart
            from preprocessing.synth import generate

            few = generate(tmp / f"warm{n}", layout="casme2", subjects=1, per_subject=2 * n, seed=9)
            t0 = time.perf_counter()
            _prepare(few, Path(tempfile.mkdtemp(dir=tmp)), "dis", "none", weights, RaySamples(lambda: None, 0))
            warm = time.perf_counter() - t0
        for flow, m in configs:
            r = _timed_prepare(root, tmp, flow, m, weights, f"ray_{n}", RaySamples(lambda: None, 0))
            if cold:  # the whole command: Ray's start and the workers' first import included
                wall = r["wall_s"] + start
                r.update(wall_s=round(wall, 2), samples_per_s=round(r["samples"] / wall, 3),
                         includes_ray_and_worker_start=True)
            runs.append({**r, "ray_start_s": round(start, 2), "worker_warmup_s": round(warm, 2)})
    finally:
        ray.shutdown()
    return runs


def breakdown(root, n, flows, mags, weights):
    """Median seconds per sample of each stage of `pipeline.process_sample` (same calls, same order), in
    this process at one OpenCV thread (a worker's setting; torch, for learned magnification, at its
    default). Flows are timed on the Eulerian-magnified frames (the paper's setting measured here)."""
    import cv2

    from preprocessing import magnify as mag
    from preprocessing.annotations import get_reader
    from preprocessing.flow import flow_image, optical_flow
    from preprocessing.landmarks import _models, crop, face_box, predictor_path, to_crop_grid
    from preprocessing.pipeline import load_frame

    cv2.setNumThreads(1)
    t = {}

    def timed(name, fn, *a):
        t0 = time.perf_counter()
        r = fn(*a)
        t.setdefault(name, []).append(time.perf_counter() - t0)
        return r

    _models.cache_clear()  # the generator placed its faces with it: load it again, timed
    t0 = time.perf_counter()
    detector, predictor = _models(str(predictor_path(None)))
    load = time.perf_counter() - t0
    cfg = _cfg(flows[0], "eulerian", weights)
    for s in get_reader("casme2")(root)[:n]:
        apex = timed("decode", load_frame, s, s.apex)
        img = np.ascontiguousarray(apex)
        rects, scores, _ = timed("face_detection", detector.run, img, cfg.detector_upsample, 0)
        shape = timed("landmarks", predictor, img, rects[int(np.argmax(scores))])
        lm = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
        box = face_box(lm, cfg.crop_margin)
        pair = None
        for m in mags:
            mcfg = _cfg(flows[0], m, weights).magnification
            numbers = s.needed_frames(mag.needs_clip(mcfg))
            frames = [apex if k == s.apex else timed(f"decode_rest[{m}]", load_frame, s, k) for k in numbers]
            clip = timed(f"crop[{m}]", lambda fs, b: np.stack([crop(f, b) for f in fs]), frames, box)
            magnified = timed(f"magnification[{m}]", mag.magnify, clip, mcfg)
            if pair is None or m == "eulerian":
                pair = magnified  # the flows are timed on the paper setting's frames where it is measured
        for f in flows:
            flow = timed(f"flow[{f}]", optical_flow, *pair, f)
            timed(f"flow_image[{f}]", flow_image, flow, cfg.size)
        to_crop_grid(lm, box, cfg.size)
    out = {k: round(statistics.median(v), 4) for k, v in t.items()}  # median: the first call's loads left out
    out["dlib_model_load_once_s"] = round(load, 3)
    out["crop_side_px"] = int(box[2])
    return out


def _random_magnet(tmp: Path) -> Path:
    import torch

    from preprocessing.magnify import MagNet

    torch.manual_seed(0)
    path = tmp / "magnet-random.pth"
    torch.save(MagNet().state_dict(), path)
    return path


def _table(out) -> None:
    w = sys.stderr.write
    machine = out["machine"]
    w(f"{out['samples']} samples, {machine['cpus']} CPUs, load average {machine['load_average'][0]:.2f}\n")
    for k, v in (out.get("breakdown_s_per_sample") or {}).items():
        w(f"  {k:28s} {v}\n")
    w(f"{'mode':8s} {'flow':10s} {'magnification':14s} {'wall s':>8s} {'samples/s':>10s}\n")
    for r in out["runs"]:
        w(f"{r['mode']:8s} {r['flow']:10s} {r['magnification']:14s} {r['wall_s']:8.2f} {r['samples_per_s']:10.3f}\n")
    if "cache_hit_s" in out:
        w(f"cache hit: {out['cache_hit_s']} s\n")
    if "target" in out:
        w(f"255 samples: {out['target']['seconds_for_255']} s (goal {out['target']['goal_s']} s)\n")


if __name__ == "__main__":
    main()
