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
from support.ray import write_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.xdist_group("ray")]

RAY = str(Path(sys.executable).parent / "ray")
PORT = 6391


def _env(temp: Path) -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(temp)}


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray start --head` and a worker node started with `ray start --block` (killing that process takes
    the node down); RAY_ADDRESS is not set for the tests unless they set it."""
    if not Path(RAY).exists():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    temp = short_temp_dir("rayc")
    env = _env(temp)
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, timeout=60)
    head = subprocess.run([RAY, "start", "--head", f"--port={PORT}", "--num-cpus=1", "--include-dashboard=false",
                           f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=120)
    assert head.returncode == 0, head.stderr
    worker = subprocess.Popen([RAY, "start", f"--address=127.0.0.1:{PORT}", "--num-cpus=1", "--block"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while len(_alive_nodes(env)) < 2:
            assert time.time() < deadline, "the worker node did not join"
            time.sleep(1)
        yield {"address": f"127.0.0.1:{PORT}", "env": env, "worker": worker, "nodes": _alive_nodes(env)}
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _alive_nodes(env: dict[str, str]) -> set[str]:
    """Node ids of the cluster that are alive (read in a subprocess: this process stays unconnected)."""
    code = (f"import json, ray; ray.init(address='127.0.0.1:{PORT}', logging_level='ERROR'); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return set(json.loads(p.stdout.strip().splitlines()[-1])) if p.returncode == 0 else set()


def _still_up(cluster) -> bool:
    """The head's GCS port answers and the worker node's process lives (cheaper than connecting)."""
    import socket

    with socket.create_connection(("127.0.0.1", PORT), timeout=3):
        pass
    return cluster["worker"].poll() is None


def _sweep(folder: Path, synth_casme2, casme2_cache, mlflow_db_template, subjects=("sub01", "sub02", "sub03")):
    path = write_sweep(folder, synth_casme2, "conv", mlflow_db=mlflow_db_template, cache=casme2_cache,
                       variants={"full": {}}, retries=2)
    doc = yaml.safe_load(path.read_text())
    doc["datasets"]["casme2"]["subjects"] = list(subjects)
    path.write_text(yaml.safe_dump(doc))
    return path


def _nodes_of(path: Path) -> set[str]:
    store = ResultsStore(path.parent / "wd" / "results")
    return {store.get(k)["meta"]["node_id"] for k in store.keys()}


def _run(path: Path, *args: str):
    return CliRunner().invoke(main, ["run", str(path), "--no-figures", *args])


def test_run_and_preprocess_beside_an_unrelated_ray(ray_cluster, synth_casme2, casme2_cache, mlflow_db_template,
                                                    tiny_casme2, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", ray_cluster["env"]["RAY_TMPDIR"])  # where `ray start` put its address file
    folder = short_temp_dir("own")
    path = _sweep(folder, synth_casme2, casme2_cache, mlflow_db_template, subjects=("sub01", "sub02"))
    r = _run(path)
    assert r.exit_code == 0, r.output
    assert not _nodes_of(path) & ray_cluster["nodes"]  # a Ray of its own, not the one running here
    p = subprocess.run([sys.executable, "-m", "orchestrator.cli", "preprocess", "--reader", "casme2", "--root",
                        str(tiny_casme2), "--flow", "dis", "--cache-dir", str(folder / "prep"), "--workers", "2",
                        "--json"], capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in ray_cluster["env"].items() if k != "RAY_ADDRESS"})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert _still_up(ray_cluster)  # left running
    shutil.rmtree(folder, ignore_errors=True)


def test_a_ray_address_that_does_not_answer_is_one_clear_error(tmp_path, synth_casme2, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    path = write_sweep(tmp_path, synth_casme2, "bad", variants={"full": {}})
    t0 = time.time()
    r = _run(path)
    assert r.exit_code == 1 and time.time() - t0 < 30
    assert "RAY_ADDRESS 127.0.0.1:9: no Ray cluster answers there" in r.output and "unset RAY_ADDRESS" in r.output
    assert "Traceback" not in r.output


@pytest.fixture(scope="module")
def joined(ray_cluster, synth_casme2, casme2_cache, mlflow_db_template):
    """The sweep run with RAY_ADDRESS naming the cluster, undisturbed: (sweep file, output)."""
    folder = short_temp_dir("join")
    path = _sweep(folder, synth_casme2, casme2_cache, mlflow_db_template)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ADDRESS", ray_cluster["address"])
        mp.setenv("RAY_AUTH_MODE", "token")
        r = _run(path, "--json")
    assert r.exit_code == 0, r.output
    yield path, r.output
    shutil.rmtree(folder, ignore_errors=True)


def test_ray_address_joins_the_cluster_it_names(joined, ray_cluster):
    path, output = joined
    assert f"joining the Ray cluster at {ray_cluster['address']} (RAY_ADDRESS)" in output
    assert _nodes_of(path) <= ray_cluster["nodes"]
    assert _still_up(ray_cluster)  # joined, not shut down


def test_a_node_lost_mid_sweep_is_one_line_and_changes_no_result(joined, ray_cluster, synth_casme2, casme2_cache,
                                                                 mlflow_db_template, monkeypatch):
    """The worker node is killed once the first fold is stored: the sweep completes with the undisturbed
    run's predictions, and the output names the lost node and the retried folds without a traceback."""
    from orchestrator.execution.state import SweepState

    folder = short_temp_dir("lose")
    path = _sweep(folder, synth_casme2, casme2_cache, mlflow_db_template)
    finished = SweepState.finished

    def finished_then_kill(self, key, result, node):
        finished(self, key, result, node)
        if ray_cluster["worker"].poll() is None:
            os.killpg(ray_cluster["worker"].pid, signal.SIGKILL)  # the node's raylet and workers, at once

    monkeypatch.setattr(SweepState, "finished", finished_then_kill)
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster["address"])
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    r = _run(path)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "SystemExit" not in r.output
    assert r.output.count("was lost: the folds it was running are retried on the other nodes") == 1, r.output
    assert re.search(r"fold casme2 full seed 1 sub0\d: its node was lost, retrying \(1 of 2\)", r.output), r.output
    before, after = (ResultsStore(p.parent / "wd" / "results") for p in (joined[0], path))
    assert sorted(before.keys()) == sorted(after.keys()) and len(list(after.keys())) == 3
    for k in after.keys():
        assert before.result(k).probs.tolist() == after.result(k).probs.tolist()
    shutil.rmtree(folder, ignore_errors=True)
