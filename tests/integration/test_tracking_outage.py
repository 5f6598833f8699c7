"""MLflow is a side channel: a tracking store that cannot be reached, created or written (at the start of
a run or later) is one warning line naming the URI; training goes on with tracking off, the results
store and reports are written, and the next run logs everything MLflow missed (no duplicates).

Sweeps here train with fake results (support.sweeps.fake_training): no data, no Ray.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.execution.runner import run_sweep
from orchestrator.planning.plan import expand
from orchestrator.planning.store import ResultsStore
from orchestrator.spec.resolved import load_sweep
from orchestrator.tracking.client import Tracker

from support import REPO
from support.sweeps import by_data_id, fake_result, fake_training

TAIL = "Training goes on; results are stored; run the sweep again later to log them to MLflow."
FOLDS = 6  # 2 variants x 3 subjects


@pytest.fixture
def sweep(tmp_path, mlflow_db_template):
    (tmp_path / "wd").mkdir()
    shutil.copy(mlflow_db_template, tmp_path / "wd" / "mlflow.db")  # migrated already: saves ~10 s
    doc = {"name": "outage", "workdir": str(tmp_path / "wd"),
           "datasets": {"samm": {"reader": "samm", "root": "/nowhere"}},
           "variants": {"a": {}, "b": {"model.gsd": False}}, "resources": {"cpu": 1, "gpu": 0}}
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli_run(sweep, *args):
    from orchestrator.cli import main

    t0 = time.time()
    res = CliRunner().invoke(main, ["run", str(sweep), "--json", *args])
    return res, time.time() - t0


def warnings_of(stderr: str):
    return [ln for ln in stderr.splitlines() if ln.lower().startswith("warning")]


def assert_ran_without_mlflow(res, uri: str, why: str):
    """Exit 0, every fold trained and stored, reports written, one warning line naming URI and error."""
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    assert warnings_of(res.stderr) == [f"warning: MLflow ({uri}) unavailable: {why}. {TAIL}"], res.stderr
    doc = json.loads(res.stdout)
    assert doc["trained_folds"] == FOLDS and all(p["complete"] for p in doc["points"])


def assert_mlflow_complete(spec):
    """Every parent and child in MLflow once, parents final with all folds."""
    from mlflow import MlflowClient

    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("microau.kind") == "parent"]
    children = [r for r in runs if r.data.tags.get("microau.kind") == "fold"]
    assert len(parents) == 2 and len(children) == FOLDS
    assert len({c.data.tags["microau.fold"] for c in children}) == FOLDS  # no duplicates
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {p.info.run_id for p in parents}
    for p in parents:
        assert p.info.status == "FINISHED" and p.data.metrics["folds_done"] == 3 and "f1" in p.data.metrics


def rerun_backfills(sweep, monkeypatch, times: int = 1):
    """MLflow fixed: the next run trains nothing and logs every parent and child (once: further runs add
    nothing)."""
    calls = fake_training(monkeypatch.setattr)
    for _ in range(times):
        res, _ = cli_run(sweep)
        assert res.exit_code == 0 and not warnings_of(res.stderr), res.output
        assert json.loads(res.stdout)["trained_folds"] == 0
        assert_mlflow_complete(load_sweep(sweep))
    assert calls["trained"] == 0


# -- at the start of a run --------------------------------------------------------------------------------
def readonly_store(wd: Path):
    """(extra CLI args, URI the warning names) for the workdir's existing mlflow.db made read-only. chmod
    does not stop root, so as root the database is opened read-only by its URI (`?mode=ro`): sqlite
    refuses writes the same way."""
    db = wd / "mlflow.db"
    if os.geteuid() == 0:
        uri = f"sqlite:///file:{db}?mode=ro&uri=true"
        return ["--tracking-uri", uri], uri
    db.chmod(0o444)
    return [], f"sqlite:///{db}"


def test_readonly_store_at_start_is_one_warning_and_the_next_run_backfills(sweep, tmp_path, monkeypatch):
    """End to end in a real process (every line it prints is seen): exit 0, one warning line naming the
    URI, no traceback, results and reports written. Then the store is fixed and the next run logs all."""
    args, uri = readonly_store(tmp_path / "wd")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "support" / "sweeps.py"), "run", str(sweep),
                           "--json", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    print(f"run with a read-only store: {time.time() - t0:.1f}s")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert warnings_of(proc.stderr) == [
        f"warning: MLflow ({uri}) unavailable: attempt to write a readonly database. {TAIL}"], proc.stderr
    assert "readonly" not in proc.stderr.replace(warnings_of(proc.stderr)[0], "")  # said once, by us
    doc = json.loads(proc.stdout)
    assert doc["trained_folds"] == FOLDS and doc["reused_folds"] == 0
    wd = tmp_path / "wd"
    assert len(list(ResultsStore(wd / "results").keys())) == FOLDS
    assert json.loads((wd / "reports" / "outage.json").read_text())["points"][0]["folds_done"] == 3
    with sqlite3.connect(wd / "mlflow.db") as con:  # nothing was written to it
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)

    (wd / "mlflow.db").chmod(0o644)
    rerun_backfills(sweep, monkeypatch, times=2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["directory", "under_a_file"])
def test_unusable_sqlite_path_at_start_fails_over_at_once(case, sweep, tmp_path, monkeypatch):
    """A store that cannot be opened (MLflow alone retries ~100 s) or whose folder cannot be created."""
    calls = fake_training(monkeypatch.setattr)
    if case == "directory":
        (tmp_path / "adir").mkdir()
        uri, why = f"sqlite:///{tmp_path / 'adir'}", "unable to open database file"
    else:
        (tmp_path / "afile").write_text("not a folder")
        uri, why = f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}", f"File exists: {tmp_path / 'afile'}"
    res, elapsed = cli_run(sweep, "--tracking-uri", uri)
    assert_ran_without_mlflow(res, uri, why)
    assert calls["trained"] == FOLDS and elapsed < 10


@pytest.fixture
def locked_db(tmp_path):
    """A second process holding `BEGIN EXCLUSIVE` on <workdir>/mlflow.db; yields its Popen."""
    db = tmp_path / "wd" / "mlflow.db"
    code = ("import sqlite3, sys\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.timeout(60)
def test_locked_store_at_start_waits_a_bounded_time(sweep, locked_db, monkeypatch):
    """Another process holds the database locked: the run waits SQLITE_WAIT_S for it, warns and trains;
    once the lock is gone the next run logs everything."""
    from orchestrator.tracking.client import SQLITE_WAIT_S

    fake_training(monkeypatch.setattr)
    uri = load_sweep(sweep).tracking_uri
    res, elapsed = cli_run(sweep)
    print(f"run with a locked store: {elapsed:.1f}s")
    assert_ran_without_mlflow(res, uri, "database is locked")
    assert SQLITE_WAIT_S <= elapsed < SQLITE_WAIT_S + 5
    locked_db.kill()
    locked_db.wait(10)
    rerun_backfills(sweep, monkeypatch)


def _refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return port


@pytest.fixture
def blackhole():
    """A local TCP port that accepts connections (the kernel completes the handshake) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["refused", "no_answer"])
def test_unreachable_tracking_server_fails_over_within_10s(case, sweep, blackhole, monkeypatch):
    calls = fake_training(monkeypatch.setattr)
    port, why = (_refused_port(), "Connection refused") if case == "refused" else (blackhole, "no answer (timed out)")
    uri = f"http://127.0.0.1:{port}"
    res, elapsed = cli_run(sweep, "--tracking-uri", uri)
    print(f"unreachable server ({case}): {elapsed:.1f}s")
    assert_ran_without_mlflow(res, uri, why)
    assert calls["trained"] == FOLDS and elapsed < 10
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ  # bounds are set per call, not left behind


# -- later in a run -----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["parent", "children", "log_fold", "update_parent"])
def test_failure_later_is_one_warning_then_tracking_is_off(where, sweep, monkeypatch, capsys):
    """MLflow failing at any step of a run (parent runs, the children lookup, a fold, a parent update):
    one warning, no further MLflow call this run, every fold stored; the next run logs everything."""
    fake_training(monkeypatch.setattr)
    spec = load_sweep(sweep)
    store = ResultsStore(spec.paths.results)
    if where == "children":  # begin() looks up the children of points with stored folds
        folds = expand(spec, *by_data_id(spec, {"samm": ["006", "007", "008"]}, {"samm": "datakey"}))
        for f in folds[:4]:  # stored by an earlier run that could not reach MLflow
            store.put(f.key, fake_result(f.subject), f.meta())
    tries = []

    def down(*a, **k):
        tries.append(1)
        raise ConnectionError("tracking server unreachable")

    with monkeypatch.context() as m:
        m.setattr(Tracker, where, down)
        outcome = run_sweep(spec, quiet=True, progress=False)
    err = capsys.readouterr().err
    uri = spec.tracking_uri
    assert warnings_of(err) == [f"warning: MLflow ({uri}) unavailable: tracking server unreachable. {TAIL}"]
    assert tries == [1] and outcome.state.tracker is None
    assert len(list(store.keys())) == FOLDS and all(r["complete"] for r in outcome.state.rows())
    assert outcome.trained == (2 if where == "children" else FOLDS)
    rerun_backfills(sweep, monkeypatch)


def test_http_bounds_leave_the_users_settings_alone(monkeypatch):
    from orchestrator.tracking.client import HTTP_LATER, env_defaults, reason, redact

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with env_defaults(HTTP_LATER):
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_LATER["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert redact("https://me:secret@mlflow.example:5000/x") == "https://me:***@mlflow.example:5000/x"
    long = RuntimeError("API request to http://h/api failed with exception HTTPConnectionPool(host='h', "
                        "port=1): Max retries exceeded (Caused by NewConnectionError('<x>: Failed to "
                        "establish a new connection: [Errno 111] Connection refused'))")
    assert reason(long) == "Connection refused"
