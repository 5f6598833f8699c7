"""Every error the orchestrator raises for a user to fix, on one base.

`MicroAUError` is defined by the lowest layer (`preprocessing.errors`, so that the data and model layers
raise it too) and re-exported here; each error below says what is wrong and what to do, naming the file,
key or sample at fault. The CLI turns any `MicroAUError` into `Error: ...` and exit status 1
(`orchestrator.cli.errors`), the one way a command fails.
"""
from __future__ import annotations

from preprocessing.errors import MicroAUError

__all__ = ["ConfigError", "LockError", "MicroAUError", "ResourceError", "StoreError"]


class ConfigError(MicroAUError, ValueError):
    """A sweep file is invalid; the message names the file and the key at fault."""


class StoreError(MicroAUError, RuntimeError):
    """The results store (or another workdir folder) cannot be written, or a record cannot be read back."""


class LockError(MicroAUError, RuntimeError):
    """Another `run` holds the workdir."""


class ResourceError(MicroAUError, RuntimeError):
    """The cluster cannot run a trial of this sweep (e.g. GPUs asked for, none present)."""
