"""One `run` per workdir at a time (`<workdir>/run.lock`, orchestrator.planning.lock): a second run is refused
at once naming the holder, a dead holder's lock is taken over, and the lock goes with the run (normal
end, exception, SIGKILL). Sweeps train with fake results (support.sweeps.fake_training): no data, no Ray.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.errors import LockError
from orchestrator.execution.runner import run_sweep
from orchestrator.planning.lock import WorkdirLock
from orchestrator.spec.resolved import load_sweep

from support import REPO
from support.sweeps import fake_training


def write_sweep(folder: Path, name: str, wd: Path) -> Path:
    doc = {"name": name, "workdir": str(wd), "datasets": {"samm": {"reader": "samm", "root": "/nowhere"}},
           "resources": {"cpu": 1, "gpu": 0}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def wd(tmp_path, mlflow_db_template):
    import shutil

    wd = tmp_path / "wd"
    wd.mkdir()
    shutil.copy(mlflow_db_template, wd / "mlflow.db")  # migrated already: saves ~10 s per test
    return wd


@contextlib.contextmanager
def held_elsewhere(wd: Path, sweep: str = "first.yaml"):
    """Another process holding the workdir lock (as a running `run` of `sweep` would); yields its Popen."""
    code = ("import sys\nfrom pathlib import Path\nfrom orchestrator.planning.lock import WorkdirLock\n"
            f"WorkdirLock(Path({str(wd)!r}) / 'run.lock', {sweep!r}).acquire()\n"
            "print('held', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.fixture
def holder(wd):
    with held_elsewhere(wd) as proc:
        yield proc


def test_a_second_run_is_refused_naming_the_holder_then_runs_once_it_is_killed(wd, tmp_path, holder,
                                                                               monkeypatch):
    from orchestrator.cli import main

    calls = fake_training(monkeypatch.setattr)
    before = sorted(p.name for p in wd.iterdir())
    for name in ("first", "second"):  # the same sweep file, or another one on the same workdir
        res = CliRunner().invoke(main, ["run", str(write_sweep(tmp_path, name, wd)), "--json"])
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert res.stderr.startswith(f"Error: {wd}: another sweep is running in this workdir: pid {holder.pid} "
                                     f"on {socket.gethostname()} since ")
        assert "(first.yaml). Wait for it to finish, or give this sweep another workdir" in res.stderr
        assert res.stdout == ""
    assert calls == {"prepared": 0, "trained": 0}  # nothing prepared, tracked or trained
    assert sorted(p.name for p in wd.iterdir()) == before  # nothing written
    with pytest.raises(LockError, match=f"pid {holder.pid} on"):
        run_sweep(load_sweep(tmp_path / "first.yaml"), quiet=True, progress=False)

    os.kill(holder.pid, signal.SIGKILL)  # the OS releases its flock; its run.lock stays behind
    holder.wait(10)
    left = json.loads((wd / "run.lock").read_text())
    assert left["pid"] == holder.pid
    res = CliRunner().invoke(main, ["run", str(tmp_path / "second.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["trained_folds"] == 3 and calls["trained"] == 3
    assert res.stderr.splitlines()[0] == (
        f"warning: {wd / 'run.lock'}: taking over the lock of pid {holder.pid} on {socket.gethostname()} "
        f"since {left['started']} (first.yaml), which is no longer running.")
    assert not (wd / "run.lock").exists()  # released at the end of the run


def test_a_stale_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                   "started": "2020-01-01T00:00:00+00:00",
                                                   "sweep": "old.yaml"}))
    with WorkdirLock(tmp_path / "run.lock", "new.yaml") as lock:
        assert capsys.readouterr().err == (f"warning: {lock.path}: taking over the lock of pid {dead.pid} on "
                                           f"{socket.gethostname()} since 2020-01-01T00:00:00+00:00 (old.yaml), "
                                           f"which is no longer running.\n")
        mine = json.loads(lock.path.read_text())
        assert mine["pid"] == os.getpid() and mine["sweep"] == "new.yaml" and mine["host"] == socket.gethostname()
        with pytest.raises(LockError, match=f"pid {os.getpid()} on .* \\(new.yaml\\)"):
            WorkdirLock(tmp_path / "run.lock", "other.yaml").acquire()  # another open file description: refused too
    assert not lock.path.exists()
    with WorkdirLock(tmp_path / "run.lock", "again.yaml"):  # free again, nothing stale to report
        assert capsys.readouterr().err == ""


def test_the_lock_goes_with_the_run_after_success_and_after_an_exception(wd, tmp_path, monkeypatch):
    import orchestrator.execution.runner as runner

    fake_training(monkeypatch.setattr)
    spec = load_sweep(write_sweep(tmp_path, "s", wd))
    assert run_sweep(spec, quiet=True, progress=False).trained == 3
    assert not (wd / "run.lock").exists()

    def boom(*a, **k):
        assert (wd / "run.lock").exists()  # held while the run works
        raise RuntimeError("boom")

    monkeypatch.setattr(runner.RayTuneBackend, "inputs", boom)  # the fake backend fake_training installed
    (wd / "results").rename(wd / "results.old")  # so that there is something to train
    with pytest.raises(RuntimeError, match="boom"):
        run_sweep(spec, quiet=True, progress=False)
    assert not (wd / "run.lock").exists()
    with WorkdirLock(wd / "run.lock", "check"):
        pass


def test_report_does_not_wait_for_a_running_sweep(wd, tmp_path, monkeypatch):
    """`report` takes no lock: it reads the store while a run holds the workdir."""
    from orchestrator.cli import main

    fake_training(monkeypatch.setattr)
    path = write_sweep(tmp_path, "first", wd)
    assert CliRunner().invoke(main, ["run", str(path), "--json"]).exit_code == 0
    with held_elsewhere(wd):
        rep = CliRunner().invoke(main, ["report", str(path), "--json"])
        assert rep.exit_code == 0, rep.output
        assert json.loads(rep.stdout)["points"][0]["folds_done"] == 3
