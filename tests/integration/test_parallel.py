"""Parallel work on the two-node Ray cluster of tests/support/ray.py: samples prepared as Ray tasks (over
both nodes) give the dataset prepared in-process, array for array, bad samples included; four folds asking
for `gpu: 0.25` each run at once on the one GPU of a node added for it (4 logical CPUs, 1 logical GPU: no
real GPU needed)."""
from __future__ import annotations

import asyncio
import contextlib
import shutil

import numpy as np
import pytest
import yaml

from preprocessing import prepare_dataset
from preprocessing.config import PreprocessConfig
from preprocessing.errors import DatasetError

from support.data import TEST_PREPROCESS

# a Ray kept up by a module fixture in the test process: these modules run one after another, in one worker
pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]


@pytest.fixture
def gpu_node(cluster):
    """A node with 4 logical CPUs and 1 logical GPU added to the shared cluster for one test (removed after
    it: the other modules' cluster has no GPU)."""
    node = cluster.add_node(num_cpus=4, num_gpus=1, object_store_memory=100 * 2**20)
    cluster.wait_for_nodes()
    yield node
    cluster.remove_node(node)


def test_ray_tasks_prepare_what_the_serial_path_prepares(cluster, synth_casme2, prepared_casme2, tmp_path):
    from orchestrator.execution.parallel import RaySamples

    mapper = RaySamples(lambda: None)  # Ray is running: used whatever the number of samples
    stats = {}
    data = prepare_dataset("casme2", synth_casme2, PreprocessConfig.model_validate(TEST_PREPROCESS),
                           tmp_path / "cache", progress=False, map_samples=mapper, stats=stats)
    assert mapper.workers == 2 and stats["prepared"] == 24 and stats["reused"] == 0  # the two 1-CPU nodes
    assert data.key == prepared_casme2.key and data.sample_ids == prepared_casme2.sample_ids
    assert np.array_equal(data.flow, prepared_casme2.flow)
    assert np.array_equal(data.landmarks, prepared_casme2.landmarks)
    assert not (tmp_path / "cache" / "pieces").exists()


def test_bad_sample_in_a_ray_task(cluster, tiny_casme2, tmp_path):
    """A sample without a face, found in a task: skipped and listed as in-process (skip), or the stop
    with its file, row and sample (stop)."""
    import cv2

    from orchestrator.execution.parallel import RaySamples
    from preprocessing.annotations import read_casme2

    root = shutil.copytree(tiny_casme2, tmp_path / "casme2")
    bad = read_casme2(root)[1]
    cv2.imwrite(str(bad.frames[bad.apex]), np.full((240, 320, 3), 90, np.uint8))
    cfg = PreprocessConfig.model_validate(TEST_PREPROCESS)
    serial = prepare_dataset("casme2", root, cfg, tmp_path / "serial", progress=False, on_error="skip")
    par = prepare_dataset("casme2", root, cfg, tmp_path / "ray", progress=False, on_error="skip",
                          map_samples=RaySamples(lambda: None))
    assert par.skipped == serial.skipped and [s["sample"] for s in par.skipped] == [bad.id]
    assert par.sample_ids == serial.sample_ids and np.array_equal(par.flow, serial.flow)
    with pytest.raises(DatasetError, match=f"row {bad.row}: sample {bad.id}: no face found"):
        prepare_dataset("casme2", root, cfg, tmp_path / "stop", progress=False,
                        map_samples=RaySamples(lambda: None))
    assert not list((tmp_path / "stop").glob("prepared-*"))


def test_four_quarter_gpu_folds_run_at_once(gpu_node, synth_casme2, tmp_path, mlflow_db_template, monkeypatch,
                                            casme2_cache):
    """`resources: {cpu: 1, gpu: 0.25}` on a Ray with one (logical) GPU: the four folds of the sweep are in
    their trainables at the same time (each waits, up to a minute, until all four are in), all on GPU 0."""
    import ray

    import orchestrator.execution.runner as runner
    from orchestrator.planning.store import ResultsStore
    from orchestrator.spec.resolved import load_sweep

    @ray.remote(num_cpus=0)
    class Room:  # an async actor: its methods run one at a time on its event loop
        def __init__(self):
            self.inside = self.most = 0
            self.full = asyncio.Event()  # set once four are inside at once

        async def enter(self):
            self.inside += 1
            self.most = max(self.most, self.inside)
            if self.most >= 4:
                self.full.set()

        async def wait_full(self, timeout: float):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.full.wait(), timeout)

        async def leave(self):
            self.inside -= 1

        async def counts(self):
            return self.inside, self.most

    room = Room.options(name="gpu-room").remote()
    from support.sweeps import fake_result
    results = {s: fake_result(s) for s in ("sub01", "sub02", "sub03", "sub04")}

    def trainable(config, jobs, datasets, prefixes):  # pickled by value into the trial workers
        import ray as r
        from ray import tune

        from orchestrator.execution.jobs import RESULT_KEY, FinishedFold

        room_ = r.get_actor("gpu-room")
        r.get(room_.enter.remote())
        r.get(room_.wait_full.remote(60))  # until all four are in (no polling: 4 processes on 2 cores)
        r.get(room_.leave.remote())
        job = jobs[config["fold"]["key"]]
        node = {"gpu_ids": ",".join(str(g) for g in r.get_gpu_ids())}
        tune.report({RESULT_KEY: FinishedFold(results[job["subject"]], node).dumps(), "finished": 1})

    monkeypatch.setattr(runner, "fold_trainable", trainable)
    # it trains nothing, so no frozen prefix is computed for it (each trial process would import torch to
    # unpickle one: four at once on two cores)
    monkeypatch.setattr(runner, "prefix_for", lambda *a, **k: None)
    wd = tmp_path / "wd"
    wd.mkdir()
    shutil.copy(mlflow_db_template, wd / "mlflow.db")
    shutil.copytree(casme2_cache, wd / "cache")  # prepared already: a cache hit
    doc = {"name": "packed", "workdir": str(wd),
           "datasets": {"casme2": {"reader": "casme2", "root": str(synth_casme2)}},
           "preprocessing": TEST_PREPROCESS, "model": {"arch": "microau-tiny", "pretrained": "none",
                                                       "trainable_blocks": 1},
           "training": {"epochs": 1, "device": "cpu"}, "resources": {"cpu": 1, "gpu": 0.25}, "retries": 0}
    path = tmp_path / "packed.yaml"
    path.write_text(yaml.safe_dump(doc))
    outcome = runner.run_sweep(load_sweep(path), quiet=True, progress=False, figures=False)
    assert outcome.trained == 4 and not outcome.failed
    assert ray.get(room.counts.remote()) == (0, 4)
    store = ResultsStore(wd / "results")
    assert [store.get(k)["meta"]["gpu_ids"] for k in store.keys()] == ["0"] * 4
