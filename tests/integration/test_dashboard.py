"""`run --dashboard`: the Ray dashboard of the embedded Ray, on 127.0.0.1, names every running fold.

One small sweep (4 folds) runs through the command line with `--dashboard` while a thread reads the
dashboard's own HTTP API, signed in with Ray's token as a user would (`Authorization: Bearer`): every fold
is seen running as an actor named `casme2 full seed 1 subNN`, the API refuses a request without the
token, and the command printed the dashboard's address and how to sign in (never the token).
"""
from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from orchestrator.cli import main

from support import short_temp_dir
from support.ray import write_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.xdist_group("ray")]


def _get(url: str, token: str | None) -> tuple[int, dict | None]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:  # not listening yet, or already gone
        return 0, None


def test_run_dashboard_names_each_running_fold(synth_casme2, casme2_cache, mlflow_db_template):
    from ray._raylet import AuthenticationTokenLoader  # the token the driver and the dashboard use

    token = AuthenticationTokenLoader.instance().get_raw_token(ignore_auth_mode=True)
    tmp_path = short_temp_dir("dash")  # Ray's temp folder (and so its logs) inside the workdir
    path = write_sweep(tmp_path, synth_casme2, "dash", mlflow_db=mlflow_db_template, cache=casme2_cache,
                       variants={"full": {}})
    running: set[str] = set()
    refused: list[int] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            code, doc = _get("http://127.0.0.1:8265/api/v0/actors?detail=1&limit=1000", token)
            if code == 200:
                running.update(a["repr_name"] for a in doc["data"]["result"]["result"] if a["state"] == "ALIVE")
                if not refused:
                    refused.append(_get("http://127.0.0.1:8265/api/v0/actors", None)[0])
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        r = CliRunner().invoke(main, ["run", str(path), "--dashboard", "--no-figures"])
    finally:
        done.set()
        watcher.join()
    assert r.exit_code == 0, r.output
    names = {f"casme2 full seed 1 {s}" for s in ("sub01", "sub02", "sub03", "sub04")}
    assert names <= running, f"seen running: {sorted(running)}"
    assert refused == [401]  # no token, no answer
    line = next(line for line in r.output.splitlines() if line.startswith("Ray dashboard: "))
    assert "http://127.0.0.1:8265" in line and "ray get-auth-token" in line and token not in r.output

    # the fold's log lines carry its name: Ray prefixes a worker's lines with the name it announced
    logs = (tmp_path / "wd" / "ray").glob("session_*/logs/worker-*.out")
    announced = {line.removeprefix(":actor_name:") for f in logs for line in f.read_text().splitlines()
                 if line.startswith(":actor_name:")}
    assert names <= announced
    shutil.rmtree(tmp_path, ignore_errors=True)
