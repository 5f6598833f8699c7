"""The error types of the data layer, and `MicroAUError`: the base of every error whose message says what
is wrong and what to do (the CLI shows those without a traceback). It lives here, in the lowest layer, so
that preprocessing, model and orchestrator can all derive from it (imports only point down)."""
from __future__ import annotations


class MicroAUError(Exception):
    """An error the user can fix from its message alone: the CLI prints it as `Error: ...` and exits 1."""


class DatasetError(MicroAUError, ValueError):
    """A dataset cannot be read or prepared. The message names the file, the row and the sample at fault
    and says what to do; for several problems it lists each on its own line."""


class SampleProblem(Exception):
    """One sample is unusable (missing or unreadable frame, no face, apex outside onset..offset).

    Raised inside the pipeline; `prepare_dataset` either stops with a DatasetError listing every problem
    (on_error="stop") or skips the sample and records the reason (on_error="skip")."""

    def __init__(self, sample, reason: str):
        super().__init__(reason)
        self.sample = sample
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.sample.where()}: {self.reason}"
