"""The one error type of the data layer."""
from __future__ import annotations


class DatasetError(ValueError):
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
