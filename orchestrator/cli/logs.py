"""The one log handler of the command line: library code logs through `logging.getLogger(__name__)`; the
CLI shows each record of its own packages as the plain line it is (`warning: ...`, `note: ...`), with no
logger name or level prefix. Warnings go to stderr; informational lines (progress such as "generating a
synthetic dataset") to stdout, unless the record asks for stderr (`extra={"stderr": True}`).

The streams are looked up when a record is written, not when the handler is installed, so a command
that redirects stdout (`--json` sends everything but the JSON object to stderr) takes these lines along.
"""
from __future__ import annotations

import logging
import sys

PACKAGES = ("preprocessing", "model", "orchestrator")


class LineHandler(logging.Handler):
    """A record's message alone, on stderr (WARNING and above, or `stderr=True`) or stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING or getattr(record, "stderr", False) \
                else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


def install(level: int = logging.INFO) -> None:
    """Route the records of this project's packages to `LineHandler` (once per process)."""
    for name in PACKAGES:
        log = logging.getLogger(name)
        if not any(isinstance(h, LineHandler) for h in log.handlers):
            handler = LineHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(handler)
        log.setLevel(level)
        log.propagate = False  # printed once, as the line it is (not again by a root handler)
