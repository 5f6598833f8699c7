"""Shared test helpers for the orchestrator tests (imported as a plain module: pytest puts tests/ on sys.path)."""
from __future__ import annotations

from orchestrator.data import data_id


def by_data_id(spec, subjects_by_dataset, keys_by_dataset):
    """Per-dataset subjects and prepared-data keys -> the mappings `expand` takes (keyed by data id)."""
    ids = {data_id(t): t.dataset for t in spec.trials()}
    return ({i: subjects_by_dataset[n] for i, n in ids.items()}, {i: keys_by_dataset[n] for i, n in ids.items()})
