"""Atomic file writes, shared by every cache and store of the project (prepared datasets, frozen
prefixes, fold results, reports): a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_file(path, mode: str = "wb") -> Iterator[IO]:
    """Yield a file open on a temp file beside `path`; when the block ends without an error, flush,
    fsync, give it the usual mode (umask) and `os.replace` it onto `path`; on any error (Ctrl-C too)
    remove the temp file and leave `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a shared cache wants the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
