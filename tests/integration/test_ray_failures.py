"""A sweep's failures on a real two-node Ray cluster (tests/support/ray.py): a driver killed after its first
stored fold resumes where it stopped, a GPU request on a GPU-less cluster fails fast, and a fold that keeps
failing is reported with its point incomplete."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from orchestrator.errors import ResourceError
from orchestrator.execution.runner import run_sweep
from orchestrator.planning.store import ResultsStore
from orchestrator.spec.resolved import load_sweep

from support import REPO
from support.ray import TRAIN, write_sweep

# a Ray kept up by a module fixture in the test process: these modules run one after another, in one worker
pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]


def test_killed_driver_resumes_where_it_stopped(cluster, synth_casme2, tmp_path, mlflow_db_template, casme2_cache):
    """SIGKILL the `run` driver after its first stored fold; the next run trains only the rest."""
    path = write_sweep(tmp_path, synth_casme2, "killed", mlflow_db_template, casme2_cache, variants={},
                       max_concurrent=1,
                       datasets={"casme2": {"reader": "casme2", "root": str(synth_casme2),
                                            "subjects": ["sub01", "sub02", "sub03"]}},
                       training={**TRAIN, "epochs": 10})  # long enough to be killed mid-fold
    spec = load_sweep(path)
    results = spec.paths.results
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(path), "--json", "--no-figures",
                             "--address", cluster.address], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if results.is_dir() and any(results.glob("*.json")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the driver finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = len(list(results.glob("*.json")))
    assert 1 <= done < 3
    store = ResultsStore(results)
    assert all(store.get(k)["result"]["sample_ids"] for k in store.keys())  # no half-written fold
    resumed = run_sweep(load_sweep(path), address=cluster.address, quiet=True, progress=False, figures=False)
    assert resumed.reused == done and resumed.trained == 3 - done
    assert resumed.state.rows()[0]["complete"]


def test_gpu_request_on_a_gpu_less_cluster_fails_fast(cluster, synth_casme2, tmp_path, mlflow_db_template,
                                                       casme2_cache):
    from orchestrator.cli import main

    path = write_sweep(tmp_path, synth_casme2, "gpu", mlflow_db_template, casme2_cache,
                       resources={"cpu": 1, "gpu": 0.25})
    t0 = time.time()
    with pytest.raises(ResourceError, match=r"resources.gpu is 0.25 per fold, but the Ray cluster at .* has "
                                            r"no GPU .* gpu: 0"):
        run_sweep(load_sweep(path), address=cluster.address, quiet=True, progress=False)
    assert time.time() - t0 < 60
    # nothing tracked or scheduled: MLflow's store (the migrated template) was opened while Ray started, but
    # holds no run
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'wd' / 'mlflow.db'}")
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    res = CliRunner().invoke(main, ["run", str(path), "--address", cluster.address])
    assert res.exit_code == 1 and "has no GPU" in res.output and "Traceback" not in res.output


def test_a_fold_that_keeps_failing_is_reported_and_its_point_incomplete(cluster, synth_casme2, tmp_path,
                                                                        mlflow_db_template, casme2_cache):
    path = write_sweep(tmp_path, synth_casme2, "failing", mlflow_db_template, casme2_cache, variants={}, retries=1,
                       training={**TRAIN, "device": "cuda"},  # no CUDA here: train_fold refuses
                       datasets={"casme2": {"reader": "casme2", "root": str(synth_casme2),
                                            "subjects": ["sub03"]}})
    from orchestrator.cli import main

    res = CliRunner().invoke(main, ["run", str(path), "--json", "--address", cluster.address])
    assert res.exit_code == 1, res.output  # a point is incomplete
    doc = json.loads(res.stdout)
    assert doc["trained_folds"] == 0
    (row,) = doc["points"]
    assert not row["complete"] and row["folds_done"] == 0 and row["folds_total"] == 1 and row["f1"] is None
    (failure,) = row["failed"]
    assert failure["subject"] == "sub03" and "CUDA" in failure["error"]
