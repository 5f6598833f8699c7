"""cluster/slurm/sweep.sbatch on a real one-node Slurm: the test starts munged, slurmctld and slurmd of its
own (a slurm.conf in a temp folder, free ports), submits the script on a tiny synthetic sweep, and checks
that the sweep completed inside the job (Ray head started by srun, token authentication, the driver joined
it with --address, MLflow behind authentication), then that a second submission trains nothing. Every
daemon it started is stopped, and no Ray process of the job may outlive it.

Slurm is not installed by the test: where `slurmctld`, `slurmd`, `sbatch` or `munged` are missing (Debian:
`apt-get install slurm-wlm munge`, which .ci/run does), it is skipped with that reason."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import REPO, free_port, short_temp_dir
from support.ray import TRAIN, write_sweep

# Ray and services started by subprocesses: a group of its own, beside the in-process Ray group "ray"
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.xdist_group("ray-services")]

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")
SCRIPT = REPO / "cluster" / "slurm" / "sweep.sbatch"
TOKEN = "slurm-test-ray-token-5b1f0c"


def _stop(*pid_files: Path) -> None:
    """SIGTERM to each daemon at once, then SIGKILL to those still up after 5 s (stopped one after another,
    their waits would add up)."""
    pids = []
    for pid_file in pid_files:
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    end = time.time() + 5
    while pids and time.time() < end:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.05)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def slurm():
    """A one-node Slurm (this machine as node `localhost`, all its CPUs) with its own munge key; yields the
    environment its commands need (SLURM_CONF)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if missing:
        pytest.skip(f"Slurm is not installed here ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    d = short_temp_dir("slurm")
    for sub in ("state", "spool", "munge"):
        (d / sub).mkdir(mode=0o700)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = d / "munge" / "munge.socket"
    conf = d / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=microautest", "SlurmctldHost=localhost", f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
        "CredType=cred/munge", f"AuthInfo=socket={sock}", "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/builtin", "MpiDefault=none", "SwitchType=switch/none",
        "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none", "ReturnToService=2", "KillWait=2",
        f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
        f"SlurmctldPidFile={d / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'slurmd.pid'}",
        f"SlurmctldLogFile={d / 'slurmctld.log'}", f"SlurmdLogFile={d / 'slurmd.log'}",
        f"NodeName=localhost CPUs={os.cpu_count() or 1} State=UNKNOWN",
        "PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    sbin = lambda name: shutil.which(name) or f"/usr/sbin/{name}"  # noqa: E731 - root's PATH may lack sbin
    try:
        subprocess.run([sbin("munged"), "--force", f"--key-file={key}", f"--socket={sock}",
                        f"--pid-file={d / 'munge' / 'munged.pid'}", f"--log-file={d / 'munge' / 'munged.log'}",
                        f"--seed-file={d / 'munge' / 'munged.seed'}"], check=True, timeout=30)
        subprocess.run([sbin("slurmctld"), "-f", str(conf)], check=True, env=env, timeout=30)
        subprocess.run([sbin("slurmd"), "-f", str(conf), "-N", "localhost"], check=True, env=env, timeout=30)
        for _ in range(150):
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout
            if state.strip() == "idle":
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the test's Slurm node did not come up ({state.strip()!r}): see {d}/slurmd.log")
        yield env
    finally:
        _stop(d / "slurmd.pid", d / "slurmctld.pid")
        _stop(d / "munge" / "munged.pid")  # last: the Slurm daemons may sign a last message with it
        shutil.rmtree(d, ignore_errors=True)


def processes_mentioning(text: str) -> list[int]:
    """Pids of this machine's processes whose command line mentions `text` (a temp folder of this test)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def submit(env: dict, folder: Path, *args: str) -> tuple[str, str]:
    """Submit the script and wait for its job to end (polled: `sbatch --wait` looks every 10 s at the end);
    (its exit code as Slurm says it, `0:0` for success; its output)."""
    out = folder / f"job-{len(list(folder.glob('job-*.out')))}.out"
    job = subprocess.run(["sbatch", "--parsable", "--nodes=1", f"--cpus-per-task={os.cpu_count() or 1}",
                          f"--output={out}", str(SCRIPT), *args], env=env, cwd=folder, capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip().split(";")[0]
    end = time.time() + 400
    while time.time() < end:
        info = subprocess.run(["scontrol", "show", "job", job, "-o"], env=env, capture_output=True, text=True).stdout
        state = dict(f.split("=", 1) for f in info.split() if "=" in f)
        if state.get("JobState") not in (None, "PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"job {job} did not end in 400 s")
    text = out.read_text() if out.exists() else ""
    print(text)
    return f"{state['JobState']} {state.get('ExitCode')}", text


def test_the_slurm_script_runs_a_sweep_to_completion_and_a_resubmission_trains_nothing(
        slurm, synth_casme2, casme2_cache, mlflow_db_template, tmp_path):
    temp = short_temp_dir("slurm-ray")  # Ray's socket paths must stay short
    home, runs = tmp_path / "home", tmp_path / "runs"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(TOKEN)  # the job must keep it to its owner
    runs.mkdir()
    shutil.copy(mlflow_db_template, runs / "mlflow.db")  # migrated already: saves ~10 s per server start
    sweep = write_sweep(tmp_path, synth_casme2, "slurm", cache=casme2_cache, variants={"full": {}},
                        training={**TRAIN, "epochs": 1, "lr_step_epoch": 1})
    env = {**slurm, "HOME": str(home), "MICROAU_DIR": str(REPO),
           "MICROAU_VENV": str(Path(sys.executable).parent.parent), "PYTHONPATH": str(REPO),
           "MICROAU_RUNS": str(runs), "MICROAU_HEAD_IP": "127.0.0.1",
           "MICROAU_MLFLOW_PORT": str(free_port()), "MICROAU_RAY_PORT": str(free_port()),
           "MICROAU_DASHBOARD_PORT": str(free_port()),
           # no dashboard here (run --dashboard is checked in test_tracking_auth.py): its process, and one
           # actor per fold where a dashboard shows them, would cost this test seconds for nothing it checks
           "MICROAU_RAY_ARGS": f"--temp-dir={temp} --object-store-memory=100000000 --include-dashboard=false "
                               f"--ray-client-server-port={free_port()} --dashboard-agent-listen-port={free_port()}"}
    try:
        t0 = time.time()
        status, out = submit(env, tmp_path, str(sweep), "--json", "--no-figures")
        print(f"first job: {time.time() - t0:.1f}s")
        assert status == "COMPLETED 0:0", out
        assert not processes_mentioning(str(temp)), "a Ray process outlived its job"
        assert not processes_mentioning(str(runs)), "the MLflow server outlived its job"
        doc = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
        assert doc["trained_folds"] == 4 and doc["reused_folds"] == 0 and all(p["complete"] for p in doc["points"])
        assert len(list((tmp_path / "wd" / "results").glob("*.json"))) == 4
        assert "warning: MLflow" not in out, out  # reached with the generated password: runs logged
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
        runs_logged = client.search_runs([client.get_experiment_by_name("slurm").experiment_id])
        assert sorted(r.data.tags["microau.kind"] for r in runs_logged) == ["fold"] * 4 + ["parent"]
        assert stat.S_IMODE((home / ".ray" / "auth_token").stat().st_mode) == 0o600
        for secret in ("mlflow-admin-password", "mlflow-flask-secret-key"):
            assert stat.S_IMODE((runs / "secrets" / secret).stat().st_mode) == 0o600
        password = (runs / "secrets" / "mlflow-admin-password").read_text().strip()
        written = [out] + [p.read_bytes().decode(errors="replace") for p in (tmp_path / "wd").rglob("*")
                           if p.is_file()] + [(runs / name).read_bytes().decode(errors="replace")
                                              for name in ("mlflow.log", "mlflow.db")]
        assert not [t for t in written if TOKEN in t or password in t]  # docs/security.md

        # resubmitted: nothing to train. (MLflow's server start, checked above, is left out this time: it
        # would double this test's time; the sweep logs to its workdir's store instead.)
        shutil.copy(mlflow_db_template, tmp_path / "wd" / "mlflow.db")
        t0 = time.time()
        status, out = submit({**env, "MICROAU_MLFLOW": "off"}, tmp_path, str(sweep), "--json", "--no-figures")
        print(f"second job: {time.time() - t0:.1f}s")
        assert status == "COMPLETED 0:0", out
        doc = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
        assert doc["trained_folds"] == 0 and doc["reused_folds"] == 4
    finally:
        for pid in processes_mentioning(str(temp)):  # only what this test's jobs left behind
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["scancel", "--user", "root"], env=slurm, capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)
