"""What crosses the driver/worker boundary: the job a trial runs (`FoldJob`) and what it sends back
(`FinishedFold`), each with one serialisation.

A `FoldJob` is plain data (the trial's config as JSON, the test subject, the prepared data and frozen
prefixes it reads, by their ids in the object store's dicts), so it travels through
`tune.with_parameters` unchanged; a `FinishedFold` travels back through `tune.report` as one JSON text
under `RESULT_KEY`, which the driver pops before Tune's loggers see the result.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from orchestrator.spec.schema import TrialConfig

RESULT_KEY = "fold_result"  # the tune.report key carrying a FinishedFold (JSON text), popped by the driver


@dataclass(frozen=True)
class FoldJob:
    """One fold to train: `trial` (our resolved config), the test `subject` (a cross-dataset unit:
    `all`), the frozen-prefix group of its data (and of its test data), the torch threads of its CPU
    share."""
    trial: TrialConfig
    subject: str
    data: str  # data id of the prepared dataset it trains on (orchestrator.planning.data.data_id)
    prefix: str | None = None  # frozen-prefix group (orchestrator.execution.trainable.prefix_group)
    threads: int | None = None
    test_data: str | None = None  # cross-dataset: the test dataset's data id
    test_prefix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "trial": self.trial.model_dump(mode="json")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FoldJob:
        return cls(**{**d, "trial": TrialConfig.model_validate(d["trial"])})


@dataclass(frozen=True)
class FinishedFold:
    """What a trial sends back: the FoldResult as a plain dict (model.result), where it ran, and the
    worker's side of its fixed costs (orchestrator.execution.runner.RunTimings)."""
    result: dict[str, Any]
    node: dict[str, Any] = field(default_factory=dict)  # node_id, node_ip, hostname, pid, gpu_ids
    timings: dict[str, Any] = field(default_factory=dict)

    def dumps(self) -> str:
        # not asdict(): it would deep-copy the result (every probability and feature) before dumping it
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> FinishedFold:
        return cls(**json.loads(text))
