"""What the model needs of a trial: `TrialLike`, the type of the `spec` that training takes.

`model.train` (`fit`, `train_fold`, `cross_dataset_fold`, `train_eval`, `loso`) and `model.inference`
(`train_model`, `save_model`) read these five attributes of it and nothing else. The orchestrator's
`TrialConfig` (a pydantic model: dataset, point, params, preprocessing, ... besides these) satisfies it, and
so does a `types.SimpleNamespace` with these attributes, as the tests and bench/ build one: model/ does not
import the orchestrator.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from model.config import ModelConfig, TrainConfig


@runtime_checkable
class TrialLike(Protocol):
    """Read-only attributes (properties here, so that a `list[int]` or `str` field satisfies them)."""

    @property
    def reader(self) -> str | None:
        """The reader of the dataset trained on: its paper alpha/beta fill an unset training.alpha/beta."""

    @property
    def aus(self) -> Sequence[int]:
        """The AU numbers detected, in output order."""

    @property
    def seed(self) -> int:
        """Seeds the model's initialisation and the batch order."""

    @property
    def model(self) -> ModelConfig:
        """Backbone, k, LSI/GSD, pooling, losses, texts."""

    @property
    def training(self) -> TrainConfig:
        """Epochs, optimiser, learning rates, device, precision, threads, alpha/beta."""
