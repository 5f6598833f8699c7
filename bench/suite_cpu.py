"""Where a command's CPU time goes, by kind of process: the test suite by default (Linux only: it reads /proc).

    .venv/bin/python bench/suite_cpu.py [--interval 0.25] [-- COMMAND ...]

Runs COMMAND (default: the README's test command, `python -m pytest -q -p no:cacheprovider`) and, every
--interval seconds until it exits, reads every process's CPU time (utime + stime) from /proc and adds what
each process used since the last look to the kind it is now (Ray's trial and task workers, idle workers, its
daemons, the test processes, the commands the tests start, MLflow's servers, Slurm's daemons, ...). A
process that ran before COMMAND counts from COMMAND's start only; one started since counts its whole CPU
time when first seen; one that starts and ends between two looks is missed.
Everything on the machine is counted, not only COMMAND's processes: run it on an otherwise idle machine.
The table goes to stderr, one JSON object to stdout (wall, CPU seconds and share per kind, COMMAND's exit
status).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# (substring of the command line, kind): the first that matches names the process
DAEMONS = (("gcs_server", "ray: gcs_server"), ("/raylet", "ray: raylet"), ("dashboard/dashboard.py", "ray: dashboard"),
           ("autoscaler/_private/monitor.py", "ray: autoscaler monitor"), ("log_monitor.py", "ray: log monitor"),
           ("setup_worker.py", "ray: runtime-env worker setup"), ("default_worker.py", "ray: worker (starting)"),
           ("mlflow server", "mlflow server"), ("mlflow.server", "mlflow server"), ("gunicorn", "mlflow server"),
           ("uvicorn", "mlflow server"),
           ("slurmctld", "slurm"), ("slurmd", "slurm"), ("slurmstepd", "slurm"), ("munged", "slurm"))


def kind(pid: str) -> str | None:
    """The kind of process `pid` is now (None when it is gone)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    if not cmd:
        return "kernel"
    title = cmd.split()[0] if cmd.startswith("ray::") else comm
    if title.startswith("ray::"):  # Ray's workers name themselves after what they run
        return {"ray::IDLE": "ray: idle worker", "ray::DashboardAgent": "ray: dashboard agent",
                "ray::RuntimeEnvAgent": "ray: runtime-env agent"}.get(title, "ray: trial / task worker")
    if comm.startswith("ray-dashboard"):  # the dashboard's module processes
        return "ray: dashboard"
    for needle, name in DAEMONS:
        if needle in cmd:
            return name
    if "exec(eval(sys.stdin" in cmd or "execnet" in cmd:
        return "pytest-xdist worker (tests in-process)"
    if "microau-sweep" in cmd or "orchestrator.cli" in cmd:
        return "microau-sweep commands (subprocesses)"
    if "pytest" in cmd.split()[1:3] or cmd.split()[0].endswith("pytest"):
        return "pytest (controller)"
    if "ray start" in cmd or cmd.split()[0].endswith("/ray"):
        return "ray: CLI (ray start/stop)"
    return f"other: {comm}"


def look(seen: dict[tuple[str, str], int], used: collections.Counter | None) -> None:
    """Every process's CPU ticks now into `seen` ((pid, start time) -> ticks at the last look); what each
    used since then (all of it for a new process) added to its kind in `used` (None: only remember)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks, key = int(fields[11]) + int(fields[12]), (pid, fields[19])
        if used is not None:
            name = kind(pid)
            if name and name != "kernel":
                used[name] += ticks - seen.get(key, 0)
        seen[key] = ticks


def sample(command: list[str], interval: float) -> dict:
    seen: dict[tuple[str, str], int] = {}
    used: collections.Counter = collections.Counter()
    look(seen, None)  # what ran before the command counts from now on only
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    while proc.poll() is None:
        time.sleep(interval)
        look(seen, used)
    look(seen, used)
    wall = time.perf_counter() - t0
    total = sum(used.values()) or 1
    rows = [{"kind": k, "cpu_s": round(v / HZ, 1), "share": round(v / total, 3)} for k, v in used.most_common()]
    return {"command": command, "returncode": proc.returncode, "wall_s": round(wall, 1),
            "cpu_s": round(total / HZ, 1), "cores": os.cpu_count(), "kinds": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between two looks at /proc")
    ap.add_argument("command", nargs="*", help="the command to run (after --); default: the test suite")
    args = ap.parse_args()
    if not Path("/proc/self/stat").exists():
        raise SystemExit("bench/suite_cpu.py reads /proc: run it on Linux")
    command = args.command or [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    out = sample(command, args.interval)
    print(f"{' '.join(command)}: exit {out['returncode']}, wall {out['wall_s']} s, CPU {out['cpu_s']} s "
          f"on {out['cores']} cores", file=sys.stderr)
    for r in out["kinds"]:
        print(f"  {r['kind']:42s} {r['cpu_s']:8.1f} s  {100 * r['share']:5.1f}%", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
