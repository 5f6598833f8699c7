"""Test support shared by the test modules: `REPO` (the checkout), `data` (synthetic prepared
datasets, the test preprocessing), `sweeps` (sweep files, fake results, and the `Backend`s that stand in for
Ray Tune)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def short_temp_dir(prefix: str = "ray") -> Path:
    """A new folder with a short path under /tmp: Ray's Unix socket paths (<temp>/session_<date>_<pid>/
    sockets/plasma_store) must stay under 108 bytes, which pytest's (and xdist's) tmp paths can exceed."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
