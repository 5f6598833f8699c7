"""Preparing a dataset's samples as Ray tasks (on the local Ray instance or across a cluster).

`RaySamples` is the `map_samples` of `preprocessing.prepare_dataset`: one task per sample, one CPU each
(OpenCV at one thread in it), at most two per CPU in flight; each task gets the bytes of the sample's
frame files with it (`preprocessing.pipeline.frame_bytes`), so a node that does not see the dataset's
folder prepares samples too. Results come back as tasks finish; the pipeline writes each one as a piece
of the cache at once and assembles the dataset when all are done. The output is the same as in-process
(the tests compare them array for array).

With fewer than `MIN_SAMPLES` samples to prepare and no Ray running yet, the samples are prepared in this
process instead: starting Ray takes seconds, more than a few samples take.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from orchestrator.execution.ray_session import find_ray, join_ray, start_ray
from preprocessing.errors import MicroAUError

MIN_SAMPLES = 16


def ray_running() -> bool:
    ray = sys.modules.get("ray")  # not imported: not running (importing Ray takes a second)
    return ray is not None and ray.is_initialized()


class RaySamples:
    """map_samples over Ray tasks. `connect()` brings Ray up on first use (it is not called for a cache
    hit or for fewer than `min_samples` samples when Ray is not running). After a call, `workers` is the
    number of CPUs the tasks were spread over (1 in-process)."""

    def __init__(self, connect: Callable[[], Any], min_samples: int = MIN_SAMPLES):
        self.connect = connect
        self.min_samples = min_samples
        self.workers: int | None = None

    def __call__(self, fn, jobs: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        if not jobs or (len(jobs) < self.min_samples and not ray_running()):
            from preprocessing.pipeline import serial_map

            self.workers = 1
            yield from serial_map(fn, jobs)
            return
        self.connect()
        import ray

        from preprocessing.pipeline import frame_bytes

        task = ray.remote(num_cpus=1)(fn)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: dict[Any, int] = {}
        queue = iter(enumerate(jobs))

        def submit() -> bool:
            nxt = next(queue, None)
            if nxt is None:
                return False
            i, job = nxt
            pending[task.remote(**job, frames=frame_bytes(job["sample"], job["cfg"]), threads=1)] = i
            return True

        try:
            while len(pending) < 2 * self.workers and submit():
                pass
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    if isinstance(e.cause, MicroAUError):  # e.g. a model file missing on that node
                        raise e.cause from None
                    raise
                submit()
                yield i, result
        finally:  # a stop on a problem, Ctrl-C: nothing keeps running for this dataset
            for ref in pending:
                ray.cancel(ref, force=True)


class LocalRay:
    """Ray for a command that only prepares data (`preprocess`), when first needed: join the cluster at
    `address` or RAY_ADDRESS (ray_session.find_ray), reuse this process's Ray, or start one of its own
    with `workers` CPUs in a temporary folder (never another Ray running on the machine); `close()` shuts
    down what it started and removes that folder."""

    def __init__(self, workers: int | None = None, address: str | None = None):
        self.workers, self.address, self.started = workers, address, False
        self.temp: str | None = None

    def __call__(self) -> None:
        import ray

        if ray.is_initialized():
            return
        import logging

        # "Token authentication is enabled for this Ray cluster": about Ray, not the data (as `run` keeps it
        # out of the terminal)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        common = dict(log_to_driver=False, configure_logging=True, logging_level="WARNING")
        address, source = find_ray(self.address)  # --address, RAY_ADDRESS, or a Ray of our own
        if address:
            join_ray(address, source, **common)
        else:
            self.temp = tempfile.mkdtemp(prefix="microau-ray-")
            start_ray(Path(self.temp), num_cpus=self.workers, include_dashboard=False, **common)
        self.started = True

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = None
