"""One `run` per workdir at a time: `<workdir>/run.lock`.

Two drivers on one workdir would both train every missing fold (the results store is only read at
start) and log duplicate MLflow child runs; on a fresh workdir one of them crashes inside MLflow's
database migration. `run_sweep` therefore takes this lock before it prepares data, tracks or
schedules anything, and a second `run` stops at once with a message naming the holder.

The lock is an OS-level `fcntl.flock` on the open file (non-blocking), so a holder that crashes or is
killed (even with SIGKILL) releases it with its last file descriptor; the file itself only records
who holds it (pid, host, start time, sweep file) for the messages. A file left by a dead holder (its
flock free) is taken over with a warning. The descriptor is not inherited by child processes (Ray's
raylet and workers), so they cannot keep a dead driver's lock.

`report` does not take the lock: it only reads the results store (each fold is written atomically)
and writes `reports/<sweep>.{csv,json}` atomically, never MLflow, so it is safe beside a running
sweep and must not wait hours for one. `fold` writes only content-addressed cache files.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import LockError

logger = logging.getLogger(__name__)


def _alive(pid: Any) -> bool:
    """Whether process `pid` exists on this machine (True when unsure)."""
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, OverflowError):
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 64 * 1024, 0).decode("utf-8", "replace").strip()
        doc = json.loads(text) if text else {}
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def describe(holder: dict[str, Any]) -> str:
    """`pid 123 on host since 2025-01-01 10:00:00+01:00 (sweeps/x.yaml)` from a lock file's contents."""
    if not holder.get("pid"):
        return "another process (it has not written its details yet)"
    text = f"pid {holder['pid']} on {holder.get('host', '?')}"
    if holder.get("started"):
        text += f" since {holder['started']}"
    if holder.get("sweep"):
        text += f" ({holder['sweep']})"
    return text


class WorkdirLock:
    """`with WorkdirLock(sweep.paths.lock, sweep_file):` holds the lock file (`<workdir>/run.lock`) or
    raises LockError."""

    def __init__(self, path: Path, sweep: str | None = None):
        self.path = Path(path)
        self.sweep = sweep
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise LockError(f"{self.path}: cannot create the run lock ({e.strerror}); the workdir must be "
                                f"writable (or point `workdir:` of the sweep file at one that is)") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise LockError(self._refusal(holder)) from None
            except OSError as e:  # e.g. ENOLCK: a network filesystem without locks
                logger.warning(f"warning: {self.path}: cannot lock it ({e.strerror}); running without the "
                               f"one-run-per-workdir guard: do not start another run in this workdir.")
            # A holder unlinks the file before it lets go (release()): if we locked a file that is no
            # longer the one at the path, another process may be locking the new one; start again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            gone = previous.get("host") == socket.gethostname() and not _alive(previous["pid"])
            logger.warning(f"warning: {self.path}: taking over the lock of {describe(previous)}, which "
                           f"{'is no longer running' if gone else 'no longer holds it'}.")
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "started_unix": time.time(), "sweep": self.sweep, "cwd": os.getcwd()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def _refusal(self, holder: dict[str, Any]) -> str:
        msg = (f"{self.path.parent}: another sweep is running in this workdir: {describe(holder)}. "
               f"Wait for it to finish, or give this sweep another workdir (`workdir:` in the sweep file).")
        pid = holder.get("pid")
        if pid and holder.get("host") == socket.gethostname() and not _alive(pid):
            msg += (f" (pid {pid} is gone, but a process it started still holds {self.path}; stop that "
                    f"process (`fuser -v {self.path}` names it).)")
        return msg

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still locked: see acquire()
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
