"""Ray for a command: joined at `--address`, or embedded in this process (never attached to another Ray
that happens to run on the machine), started when first needed and shut down by whoever started it.

`RaySession` serves `run` (folds and samples share it); `check_resources` fails a sweep at once when no
node can run one of its folds. Ray's start-up notices go to `<workdir>/logs/ray.log`, not the terminal.
"""
from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import ResourceError
from orchestrator.spec.resolved import Sweep

logger = logging.getLogger(__name__)

_MAX_SOCKET_DIR = 60  # Ray's Unix socket paths (<temp>/session_<date>_<pid>/sockets/...) must stay < 108


def _ray_temp_dir(wanted: Path) -> str:
    """Ray's temp dir inside the workdir when its path is short enough for Ray's Unix sockets."""
    wanted = wanted.resolve()
    if len(str(wanted)) <= _MAX_SOCKET_DIR:
        wanted.mkdir(parents=True, exist_ok=True)
        return str(wanted)
    return tempfile.mkdtemp(prefix="microau-ray-")


def find_ray(address: str | None) -> tuple[str | None, str]:
    """Where a command's Ray is, decided the same way by every command: `--address` if given, else the
    RAY_ADDRESS environment variable (Ray's own convention) if set, else (None, "") for an embedded Ray
    of the command's own. The second item names where the address came from, for messages."""
    if address:
        return address, "--address"
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return (env, "RAY_ADDRESS") if env else (None, "")


def join_ray(address: str, source: str, **init) -> Any:
    """`ray.init` joining the cluster at `address` (from `source`), never with num_cpus/num_gpus (the
    cluster has its own). An address that does not answer is a ResourceError naming it and its source
    within seconds, not a traceback or a long wait."""
    import ray  # heavy: when Ray is first needed, for start-up time

    _answers(address, source)
    if source == "RAY_ADDRESS":
        logger.info(f"joining the Ray cluster at {address} (RAY_ADDRESS)")
    try:
        return ray.init(address=address, **init)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as e:
        raise ResourceError(f"{source} {address}: could not join a Ray cluster there ({_first_line(e)}); "
                            f"start one (`ray start --head`), correct the address, or "
                            f"{'unset RAY_ADDRESS' if source == 'RAY_ADDRESS' else 'leave out --address'} "
                            f"to run on an embedded Ray") from None


def start_ray(temp_dir: Path | None = None, **init) -> Any:
    """`ray.init` starting a Ray of this command's own (`address="local"`) in `temp_dir` (None: a new
    temporary folder): never one that happens to run on the machine (a `ray start --head`, a
    notebook's), whatever RAY_ADDRESS says."""
    import ray  # heavy: see above

    temp = _ray_temp_dir(temp_dir) if temp_dir is not None else tempfile.mkdtemp(prefix="microau-ray-")
    try:
        return ray.init(address="local", _temp_dir=temp, **init)
    except (ConnectionError, TimeoutError, RuntimeError) as e:  # e.g. its GCS not up in time on a busy machine
        raise ResourceError(f"Ray did not start on this machine ({_first_line(e)}); Ray's own logs are in "
                            f"{temp}/session_latest/logs. A machine this busy may need a second try: run the "
                            f"same command again (nothing finished is redone)") from None


def _answers(address: str, source: str, timeout: float = 3.0) -> None:
    """A TCP connection to `host:port` (or a ray:// client address) opens within `timeout` s; "auto" is
    left to Ray (it finds a cluster started on this machine, or fails at once)."""
    target = address.split("://", 1)[-1]
    if target in ("auto", "local") or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise ResourceError(f"{source} {address}: no Ray cluster answers there ({e}); start one "
                            f"(`ray start --head`), correct the address, or "
                            f"{'unset RAY_ADDRESS' if source == 'RAY_ADDRESS' else 'leave out --address'} "
                            f"to run on an embedded Ray") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def connect(sweep: Sweep, address: str | None, dashboard: bool = False) -> tuple[bool, str]:
    """Join the cluster `find_ray(address)` names, reuse an initialised Ray, or start an embedded one:
    (True if this call started or joined it, the dashboard's address or "" when it has none).

    The embedded Ray's dashboard is off unless asked for, and then bound to 127.0.0.1 only. What Ray's
    workers print goes to `<workdir>/logs/workers.log` (worker_output_to)."""
    import ray  # heavy: when Ray is first needed, for start-up time

    if ray.is_initialized():
        return False, _dashboard_url()
    for name in RAY_STARTUP_LOGGERS:
        log = logging.getLogger(name)
        for f in [f for f in log.filters if isinstance(f, ToLogFile)]:
            log.removeFilter(f)  # an earlier sweep of this process
        log.addFilter(ToLogFile(sweep.paths.logs / "ray.log"))
    common = dict(log_to_driver=True, configure_logging=True, logging_level="WARNING")
    address, source = find_ray(address)
    if address:
        context = join_ray(address, source, **common)
        worker_output_to(sweep.paths.logs / "workers.log")
        return True, context.dashboard_url or ""
    extra = {"dashboard_host": "127.0.0.1"} if dashboard else {}
    # Ray starts one idle worker per CPU and makes the driver wait for them; Tune's trial actors never
    # take them (Tune gives its actors a runtime_env, and a worker is reused only for the same one), so
    # they were processes (an interpreter importing Ray each) started for nothing on the path of every run.
    # Tasks (preparing samples) start their workers when they are first needed
    context = start_ray(sweep.paths.ray, num_cpus=os.cpu_count() or 1, include_dashboard=dashboard,
                        _system_config={"prestart_worker_first_driver": False}, **extra, **common)
    worker_output_to(sweep.paths.logs / "workers.log")
    if dashboard:
        url = context.dashboard_url or "127.0.0.1:8265"
        logger.info(f"Ray dashboard: http://{url} (this machine only; from another machine: "
                    f"ssh -L {url.rsplit(':', 1)[-1]}:{url} THIS_HOST, then the same address there). "
                    f"{sign_in_hint()}")
    return True, context.dashboard_url or ""


def worker_output_to(path: Path) -> None:
    """What Ray's workers print (a fold's warnings; a dying worker's traceback when its node is lost) goes
    to `path`, each line prefixed as Ray prefixes it (`(casme2 full seed 1 sub05 pid=...)`), instead of
    the terminal: the user's output holds one line per lost node or retried fold (SweepState), not
    Ray's tracebacks. Replaces the handler ray.init(log_to_driver=True) installs."""
    from ray._private import worker as ray_worker  # Ray's driver-side handler of worker output

    path = Path(path).resolve()  # the sweep's folder now: a later chdir of this process does not move it
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def write(data: dict[str, Any]) -> None:
        try:
            with lock, open(path, "a") as f:
                ray_worker.print_worker_logs(data, f)
        except OSError:
            pass  # no log file: the lines are lost, never the sweep

    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", write)


def _dashboard_url() -> str:
    """The dashboard address of the Ray this process is connected to ("" when it has none)."""
    import ray

    try:
        return ray._private.worker.get_dashboard_url() or ""  # what ray.init's context gives as dashboard_url
    except Exception:  # noqa: BLE001 - a detail for naming folds, never a failure
        return ""


def sign_in_hint() -> str:
    """How to sign in to the dashboard of a Ray with token authentication: where the token is, never the
    token itself (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or Ray's default file, as Ray reads them)."""
    mode = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if mode != "token":
        return f"No sign-in: token authentication is off (RAY_AUTH_MODE={mode})."
    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "the token in the environment variable RAY_AUTH_TOKEN"
    elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
        where = f"the token in the file {os.environ['RAY_AUTH_TOKEN_PATH']} (RAY_AUTH_TOKEN_PATH)"
    else:
        where = "the token that `ray get-auth-token` prints (kept in ~/.ray/auth_token)"
    return f"Sign in with {where}; API clients send it as `Authorization: Bearer <token>`."


class RaySession:
    """`connect` on first call (preparing samples, or scheduling folds), once; `close()` shuts down the Ray
    this run started or joined."""

    def __init__(self, sweep: Sweep, address: str | None, dashboard: bool):
        self.args = (sweep, address, dashboard)
        self.connected = self.started = False
        self.dashboard_url = ""  # once connected: where its dashboard is ("" when it has none)

    def __call__(self) -> None:
        if not self.connected:
            sweep, address, dashboard = self.args
            self.started, self.dashboard_url = connect(sweep, address, dashboard=dashboard)
            self.connected = True

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def check_resources(sweep: Sweep, address: str | None = None) -> dict[str, float]:
    """Fail now, with a message saying what to change, when no node can run one fold of the sweep."""
    import ray

    need = {"CPU": sweep.resources.cpu, "GPU": sweep.resources.gpu}
    address, source = find_ray(address)
    where = f"the Ray cluster at {address} ({source})" if address else "the local Ray instance"
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = {"CPU": sum(n["Resources"].get("CPU", 0) for n in nodes),
             "GPU": sum(n["Resources"].get("GPU", 0) for n in nodes)}
    if need["GPU"] > 0 and total["GPU"] == 0:
        raise ResourceError(
            f"{sweep.source}: resources.gpu is {need['GPU']} per fold, but {where} has no GPU "
            f"({len(nodes)} node(s), {total['CPU']:g} CPUs). Set `resources: {{cpu: 1, gpu: 0}}` in the "
            f"sweep file to train on CPUs, or run it on a cluster with GPU nodes (--address).")
    fits = [n for n in nodes if all(n["Resources"].get(k, 0) >= v for k, v in need.items() if v > 0)]
    if not fits:
        biggest = max(((n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes),
                      default=(0, 0))
        raise ResourceError(
            f"{sweep.source}: one fold asks for resources {{cpu: {need['CPU']:g}, gpu: {need['GPU']:g}}} "
            f"but no node of {where} has that much (largest: {biggest[0]:g} CPUs, {biggest[1]:g} GPUs); "
            f"lower `resources` in the sweep file")
    return total


class ToLogFile(logging.Filter):
    """Moves the records of one logger from the console into a log file (Ray's start-up notices)."""

    def __init__(self, path: Path):
        super().__init__()
        # resolved now: a relative workdir stays the sweep's, whatever this process's folder later (the
        # filter stays on the logger after the run, until the next run of the process replaces it)
        self.path = Path(path).resolve()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {record.levelname} {record.name}: "
                        f"{record.getMessage()}\n")
        except OSError:
            return True  # no log file: show it after all
        return False


# Ray's start-up notices that are about Ray, not the sweep (token authentication is on by default)
RAY_STARTUP_LOGGERS = ("ray._private.authentication.authentication_token_setup",
                        "ray.tune.utils.util")  # "... may be a performance bottleneck" (our callback logs to MLflow)

