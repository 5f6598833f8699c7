"""Ray's conventions as a Ray user meets them, on a real `ray start` cluster on this machine (a head and a
worker node, 1 CPU each, token authentication, no dashboard), unrelated to the commands under test:

- with it up and RAY_ADDRESS unset, `run` and `preprocess --workers 2` start a Ray of their own (never
  attaching to it) and leave it running;
- with RAY_ADDRESS naming it, `run` joins it (says so in one line) and its trials run there;
- a RAY_ADDRESS where nothing answers is one error line naming it, within seconds;
- losing the worker node mid-sweep: the folds it ran are retried, the metrics are those of the undisturbed
  run, and the output has one line for the node and one per retried fold, no traceback.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.planning.store import ResultsStore

from support import short_temp_dir
from support.ray import TRAIN, write_sweep

# its Rays beside the in-process Ray group "ray" (in another test process), one after another with the
# other service tests
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.xdist_group("ray-services")]

RAY = str(Path(sys.executable).parent / "ray")
PORT = 6391


def _env(temp: Path) -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(temp)}


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray start --head` and a worker node, each started with `--block` in a process group of its own
    (killing the group takes that node down at once, and touches no other Ray on the machine); RAY_ADDRESS
    is not set for the tests unless they set it."""
    if not Path(RAY).exists():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    temp = short_temp_dir("rayc")
    env = _env(temp)
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, timeout=60)
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    small = f"--object-store-memory={100 * 2**20}"  # Ray's default is 30% of the machine's memory
    head = subprocess.Popen([RAY, "start", "--head", f"--port={PORT}", "--num-cpus=1", "--include-dashboard=false",
                             small, f"--temp-dir={temp}", "--block"], **quiet)
    worker = None
    try:
        deadline = time.time() + 60
        while not _answers():
            assert time.time() < deadline and head.poll() is None, "the head did not start"
            time.sleep(0.5)
        worker = subprocess.Popen([RAY, "start", f"--address=127.0.0.1:{PORT}", "--num-cpus=1", small, "--block"],
                                  **quiet)
        nodes = _alive_nodes(env, wanted=2, timeout=max(1.0, deadline - time.time()))
        assert len(nodes) == 2, "the worker node did not join"
        yield {"address": f"127.0.0.1:{PORT}", "env": env, "worker": worker, "nodes": nodes}
    finally:
        for p in (worker, head):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
        shutil.rmtree(temp, ignore_errors=True)


def _answers() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=1):
            return True
    except OSError:
        return False


def _alive_nodes(env: dict[str, str], wanted: int, timeout: float) -> set[str]:
    """Node ids of the cluster that are alive, once `wanted` are (or at `timeout` s): read in one
    subprocess that connects once and polls (this process stays unconnected; a Python start, Ray's import
    and a driver's connection per poll cost seconds of CPU each)."""
    code = (f"import json, time, ray; ray.init(address='127.0.0.1:{PORT}', logging_level='ERROR')\n"
            f"end = time.time() + {timeout}\n"
            f"while len(alive := [n['NodeID'] for n in ray.nodes() if n['Alive']]) < {wanted} and time.time() < end:\n"
            f"    time.sleep(0.2)\n"
            f"print(json.dumps(alive))")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout + 60)
    return set(json.loads(p.stdout.strip().splitlines()[-1])) if p.returncode == 0 else set()


def _still_up(cluster) -> bool:
    """The head's GCS port answers and the worker node's process lives (cheaper than connecting)."""
    return _answers() and cluster["worker"].poll() is None


def _sweep(folder: Path, synth_casme2, casme2_cache, mlflow_db_template, subjects=("sub01", "sub02", "sub03"),
           **over):
    # folds of 3 epochs: the node is killed while a fold waits at an epoch's report, not by a timer, so a
    # fold need not last long
    path = write_sweep(folder, synth_casme2, "conv", mlflow_db=mlflow_db_template, cache=casme2_cache,
                       variants={"full": {}}, retries=2, training=TRAIN, **over)
    doc = yaml.safe_load(path.read_text())
    doc["datasets"]["casme2"]["subjects"] = list(subjects)
    path.write_text(yaml.safe_dump(doc))
    return path


def _raylet_in_group(pid: int, group: int) -> int | None:
    """The parent of process `pid` when it is in process group `group` (the raylet of the node started in
    that group: a worker process is the raylet's child, in a process group of its own), else None."""
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return ppid if os.getpgid(ppid) == group else None
    except (OSError, ValueError, IndexError):
        return None


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _nodes_of(path: Path) -> set[str]:
    store = ResultsStore(path.parent / "wd" / "results")
    return {store.get(k)["meta"]["node_id"] for k in store.keys()}


def _run(path: Path, *args: str):
    return CliRunner().invoke(main, ["run", str(path), "--no-figures", *args])


@pytest.fixture(scope="module")
def beside(ray_cluster, synth_casme2, casme2_cache, mlflow_db_template):
    """The sweep run with the cluster up and RAY_ADDRESS unset: (sweep file, output); undisturbed, it is
    also the reference for the run that loses a node."""
    folder = short_temp_dir("own")
    # one fold at a time: one worker process imports torch, not one per CPU (the folds' results do not
    # depend on where or beside what they train)
    path = _sweep(folder, synth_casme2, casme2_cache, mlflow_db_template, max_concurrent=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("RAY_TMPDIR", ray_cluster["env"]["RAY_TMPDIR"])  # where `ray start` put its address file
        r = _run(path)
    assert r.exit_code == 0, r.output
    yield path, r.output
    shutil.rmtree(folder, ignore_errors=True)


def test_run_and_preprocess_beside_an_unrelated_ray(beside, ray_cluster, tiny_casme2, tmp_path, monkeypatch):
    """`run` and `preprocess --workers 2` beside a running cluster use Rays of their own and leave it up;
    the Ray workers prepare exactly what one process prepares, with a clean output (no Ray start-up
    notices, no traceback), no pieces left, and their Ray shut down at the end."""
    import numpy as np
    import ray

    from preprocessing import PreparedDataset

    path, _ = beside
    assert not _nodes_of(path) & ray_cluster["nodes"]  # a Ray of its own, not the one running here
    # in this process, as `beside` runs `run` (a subprocess would import everything again)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for k in ("RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED"):  # where `ray start` put its address file...
        monkeypatch.setenv(k, ray_cluster["env"][k])
    args = ["preprocess", "--reader", "casme2", "--root", str(tiny_casme2), "--flow", "dis", "--json"]
    r = CliRunner().invoke(main, [*args, "--cache-dir", str(tmp_path / "ray"), "--workers", "2"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "Token authentication" not in r.stderr and not ray.is_initialized()
    assert _still_up(ray_cluster)  # left running
    serial = CliRunner().invoke(main, [*args, "--cache-dir", str(tmp_path / "serial")])
    assert serial.exit_code == 0, serial.output
    assert json.loads(r.stdout) == json.loads(serial.stdout)
    a, = (tmp_path / "ray").glob("prepared-*.npz")
    b, = (tmp_path / "serial").glob("prepared-*.npz")
    assert np.array_equal(PreparedDataset.load(a).flow, PreparedDataset.load(b).flow)
    assert not (tmp_path / "ray" / "pieces").exists()


def test_a_ray_address_that_does_not_answer_is_one_clear_error(tmp_path, synth_casme2, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    path = write_sweep(tmp_path, synth_casme2, "bad", variants={"full": {}})
    t0 = time.time()
    r = _run(path)
    assert r.exit_code == 1 and time.time() - t0 < 30
    assert "RAY_ADDRESS 127.0.0.1:9: no Ray cluster answers there" in r.output and "unset RAY_ADDRESS" in r.output
    assert "Traceback" not in r.output


def test_ray_address_joins_and_a_node_lost_mid_sweep_changes_no_result(beside, ray_cluster, synth_casme2,
                                                                        casme2_cache, mlflow_db_template,
                                                                        monkeypatch):
    """RAY_ADDRESS names the cluster: `run` says it joins, and its folds run there. The worker node is
    killed while a fold trains on it: at the fold's first epoch report (the cluster's two 1-CPU nodes run
    one fold each; a trial waits at each report until the driver has taken it, so the fold is mid-training
    however short its epochs). The sweep completes with the undisturbed run's predictions, and the output
    names the lost node and the retried fold without a traceback; the head stays up."""
    from orchestrator.execution.state import SweepState

    folder = short_temp_dir("lose")
    path = _sweep(folder, synth_casme2, casme2_cache, mlflow_db_template)
    progress, killed = SweepState.progress, []
    worker = ray_cluster["worker"]

    def progress_then_kill(self, key, result):
        progress(self, key, result)
        # the fold's worker process is a child of the worker node's raylet (Ray gives it a process group of
        # its own; the raylet is in the node's)
        if (not killed and worker.poll() is None and result.get("epoch", 0) < result.get("epochs", 0)
                and (raylet := _raylet_in_group(result["pid"], worker.pid))):
            os.killpg(worker.pid, signal.SIGKILL)  # the node's raylet and agents at once
            # and the fold's worker itself: it would notice its raylet gone only later, and a fold that
            # finished meanwhile hands its result to the driver directly (no retry to see)
            with contextlib.suppress(ProcessLookupError):
                os.kill(result["pid"], signal.SIGKILL)
            deadline = time.time() + 10
            while not _gone(raylet) and time.time() < deadline:  # down before Tune goes on
                time.sleep(0.02)
            killed.append(key)

    monkeypatch.setattr(SweepState, "progress", progress_then_kill)
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster["address"])
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    r = _run(path)
    assert r.exit_code == 0, r.output
    assert killed, "no fold reported from the worker node"
    assert f"joining the Ray cluster at {ray_cluster['address']} (RAY_ADDRESS)" in r.output
    assert _nodes_of(path) <= ray_cluster["nodes"]  # its folds ran there
    assert "Traceback" not in r.output and "SystemExit" not in r.output
    assert r.output.count("was lost: the folds it was running are retried on the other nodes") == 1, r.output
    assert re.search(r"fold casme2 full seed 1 sub0\d: its node was lost, retrying \(1 of 2\)", r.output), r.output
    assert _answers()  # joined, not shut down
    before, after = (ResultsStore(p.parent / "wd" / "results") for p in (beside[0], path))
    assert sorted(before.keys()) == sorted(after.keys()) and len(list(after.keys())) == 3
    for k in after.keys():
        assert before.result(k).probs.tolist() == after.result(k).probs.tolist()
    shutil.rmtree(folder, ignore_errors=True)
