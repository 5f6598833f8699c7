"""MLflow behind its own authentication (`mlflow server --app-name basic-auth`, as cluster.yaml and the Slurm
script start it), and secrets never written down.

One real server on 127.0.0.1 for the module, with its admin account set through MLflow's documented auth
config (MLFLOW_AUTH_CONFIG_PATH: a basic_auth.ini with admin_username, admin_password and a SQLite
database, in a temp folder). Sweeps sign in the way MLflow documents (MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD, or user:password in the URI): with the right password their runs are there,
readable with the same credentials only; a wrong or missing one is one warning line, and the sweep trains
and exits 0 as with a server that is down (tests/integration/test_tracking_outage.py). The tracking tests
train in-process or with fake results (no Ray); the secrets test runs a real `run` with an embedded Ray
(token authentication, dashboard on) and looks for the token and the password everywhere it wrote.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from support import REPO, free_port, short_temp_dir
from support.ray import TRAIN, write_sweep
from support.sweeps import fake_training, inprocess_training

pytestmark = pytest.mark.slow

ADMIN, PASSWORD = "admin", "test-mlflow-password-8c2e41"
TOKEN = "test-ray-token-0f9a7d3e5b"
TAIL = "Training goes on; results are stored; run the sweep again later to log them to MLflow."


def request(url: str, user: str | None = None, password: str | None = None) -> int:
    """HTTP status of a GET, signed in with basic auth when `user` is given."""
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:  # not listening yet
        return 0


def _dashboard(path: str, token: str | None) -> tuple[int, dict | None]:
    req = urllib.request.Request(f"http://127.0.0.1:8265{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:  # not listening yet, or already gone
        return 0, None


@pytest.fixture(scope="module")
def server(tmp_path_factory, mlflow_db_template):
    """`mlflow server --app-name basic-auth` on 127.0.0.1 (a free port); yields (uri, its store folder)."""
    folder = tmp_path_factory.mktemp("mlflow-auth")
    shutil.copy(mlflow_db_template, folder / "mlflow.db")  # migrated already
    ini = folder / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                   f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
                   f"admin_username = {ADMIN}\nadmin_password = {PASSWORD}\n"
                   f"authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   f"auth_cache_ttl_seconds = 300\n")  # as cluster.yaml and the Slurm script: see docs/security.md
    ini.chmod(0o600)
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-flask-key",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as cluster/mlflow_server.sh: no job runner
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        env.pop(k, None)
    mlflow = Path(sys.executable).with_name("mlflow")
    t0 = time.time()
    proc = subprocess.Popen([str(mlflow), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                             "--artifacts-destination", str(folder / "mlartifacts")],
                            cwd=folder, env=env, stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    while request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", ADMIN, PASSWORD) != 200:
        if proc.poll() is not None or time.time() - t0 > 240:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server --app-name basic-auth did not start: {(folder / 'server.log').read_text()}")
        time.sleep(0.5)
    print(f"basic-auth server up in {time.time() - t0:.1f}s")
    yield uri, folder
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def signed_out(monkeypatch, tmp_path):
    """No MLflow credentials in the environment, and a HOME without ~/.mlflow/credentials."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def cli_run(sweep: Path, *args):
    from orchestrator.cli import main

    t0 = time.time()
    res = CliRunner().invoke(main, ["run", str(sweep), "--json", *args])
    return res, time.time() - t0


def warnings_of(stderr: str):
    return [ln for ln in stderr.splitlines() if ln.lower().startswith("warning")]


def test_the_server_refuses_requests_without_the_right_password(server):
    uri, _ = server
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert request(search) == 401
    assert request(search, ADMIN, "not-the-password") == 401
    assert request(search, ADMIN, PASSWORD) == 200


def test_a_sweep_with_the_right_credentials_is_tracked_and_readable_with_them_only(
        server, signed_out, synth_casme2, casme2_cache, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri, _ = server
    calls = inprocess_training(monkeypatch.setattr)
    sweep = write_sweep(tmp_path, synth_casme2, "auth_ok", cache=casme2_cache, variants={"full": {}},
                        training={**TRAIN, "epochs": 1, "lr_step_epoch": 1})
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    res, elapsed = cli_run(sweep, "--tracking-uri", uri)
    print(f"sweep against the basic-auth server: {elapsed:.1f}s")
    assert res.exit_code == 0 and not warnings_of(res.stderr), res.output
    assert calls["trained"] == 4 and json.loads(res.stdout)["trained_folds"] == 4

    client = MlflowClient(uri)  # signed in by the same environment
    exp = client.get_experiment_by_name("auth_ok")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["microau.kind"] for r in runs) == ["fold"] * 4 + ["parent"]
    parent = next(r for r in runs if r.data.tags["microau.kind"] == "parent")
    assert parent.info.status == "FINISHED" and parent.data.metrics["folds_done"] == 4

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    with pytest.raises(MlflowException, match="401"):
        MlflowClient(uri).search_runs([exp.experiment_id])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["wrong_password", "wrong_password_in_uri", "no_credentials"])
def test_a_wrong_or_missing_password_is_one_warning_and_training_goes_on(case, server, signed_out, tmp_path,
                                                                         monkeypatch):
    uri, _ = server
    calls = fake_training(monkeypatch.setattr)
    doc = {"name": f"auth_{case}", "workdir": str(tmp_path / "wd"),
           "datasets": {"samm": {"reader": "samm", "root": "/nowhere"}},
           "variants": {"a": {}, "b": {"model.gsd": False}}, "resources": {"cpu": 1, "gpu": 0}}
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(doc))
    shown = uri
    if case == "wrong_password":
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-pw-123")
        why = f"the tracking server refused the sign-in of user '{ADMIN}' (HTTP 401): check MLFLOW_TRACKING_PASSWORD " \
              f"(or ~/.mlflow/credentials)"
    elif case == "wrong_password_in_uri":
        uri = uri.replace("http://", f"http://{ADMIN}:wrong-pw-123@")
        shown = uri.replace("wrong-pw-123", "***")
        why = f"the tracking server refused the sign-in of user '{ADMIN}' (HTTP 401): check the password in the " \
              f"tracking URI"
    else:
        why = ("the tracking server asks for a sign-in (HTTP 401) and none is set: set MLFLOW_TRACKING_USERNAME and "
               "MLFLOW_TRACKING_PASSWORD, or write them to ~/.mlflow/credentials (docs/security.md)")
    res, elapsed = cli_run(sweep, "--tracking-uri", uri)
    print(f"{case}: {elapsed:.1f}s")
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    assert warnings_of(res.stderr) == [f"warning: MLflow ({shown}) unavailable: {why}. {TAIL}"], res.stderr
    assert "wrong-pw-123" not in res.output + res.stderr
    assert json.loads(res.stdout)["trained_folds"] == 6 and calls["trained"] == 6
    assert elapsed < 10


def files_under(*roots: Path):
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield path


@pytest.mark.ray
@pytest.mark.xdist_group("ray-services")  # with the other subprocess Ray tests, beside the "ray" group
def test_run_dashboard_names_each_fold_and_no_secret_is_written_down(server, synth_casme2, casme2_cache, tmp_path):
    """A real `run --dashboard` (embedded Ray, token authentication with a known token in ~/.ray/auth_token)
    against the basic-auth server with known credentials.

    The dashboard (issue 18): while it runs, its HTTP API, signed in with the token, lists every fold as a
    running actor named `casme2 full seed 1 subNN`, and refuses a request without the token (401); the
    command printed the dashboard's address and how to sign in; each fold's worker announced its name
    for its log lines. The secrets (issue 20): neither secret in its output, anywhere under the workdir
    (Ray's session folder and logs included) or in the MLflow store (database and artifacts)."""
    uri, store = server
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(TOKEN)
    (home / ".ray" / "auth_token").chmod(0o600)
    short = short_temp_dir("secrets")  # the embedded Ray's sockets live under the workdir: a short path
    # two folds (two subjects): each is an actor of its own, a process that imports torch; two show that
    # every running fold is named
    sweep = write_sweep(short, synth_casme2, "secrets", cache=casme2_cache, variants={"full": {}},
                        datasets={"casme2": {"reader": "casme2", "root": str(synth_casme2),
                                             "subjects": ["sub01", "sub02"]}},
                        training={**TRAIN, "epochs": 1, "lr_step_epoch": 1})
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token",
           "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    try:
        t0 = time.time()
        running, refused, done = set(), [], threading.Event()

        def watch():  # the dashboard's own API, as a user's client reads it
            while not done.is_set():
                code, doc = _dashboard("/api/v0/actors?detail=1&limit=1000", TOKEN)
                if code == 200:
                    running.update(a["repr_name"] for a in doc["data"]["result"]["result"] if a["state"] == "ALIVE")
                    if not refused:
                        refused.append(_dashboard("/api/v0/actors", None)[0])
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(sweep), "--dashboard",
                                   "--no-figures", "--tracking-uri", uri], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=300)
        finally:
            done.set()
            watcher.join()
        print(f"run with Ray and the dashboard: {time.time() - t0:.1f}s")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        names = {f"casme2 full seed 1 {s}" for s in ("sub01", "sub02")}
        assert names <= running, f"seen running: {sorted(running)}"
        assert refused == [401]  # no token, no answer
        line = next(x for x in proc.stdout.splitlines() if x.startswith("Ray dashboard: "))
        assert "http://127.0.0.1:8265" in line and "ray get-auth-token" in line
        announced = {x.removeprefix(":actor_name:") for f in (short / "wd" / "ray").glob("session_*/logs/worker-*.out")
                     for x in f.read_text().splitlines() if x.startswith(":actor_name:")}
        assert names <= announced  # Ray prefixes each fold's log lines with this name
        assert not warnings_of(proc.stderr), proc.stderr  # tracked: the password reached MLflow
        wd = short / "wd"
        assert (wd / "logs" / "ray.log").is_file() or (wd / "ray").is_dir()
        found = [f"printed output: {s}" for s in (TOKEN, PASSWORD) if s in proc.stdout + proc.stderr]
        checked = 0
        for path in files_under(wd, store / "mlflow.db", store / "mlartifacts"):
            data = path.read_bytes()
            checked += 1
            found += [f"{path}: {s}" for s in (TOKEN, PASSWORD) if s.encode() in data]
        assert checked > 20 and not found, found
    finally:
        shutil.rmtree(short, ignore_errors=True)
