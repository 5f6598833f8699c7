"""Every fold stored before the orchestrator was regrouped is reused after it: the config hash, fold key,
group key, data id and frozen-prefix group of every trial of every sweep file in sweeps/ are the ones the
code wrote before (main at c94896b, recorded in tests/data/keys-c94896b.json by running that version's
`load_sweep` over these files). A change that alters results (a reading, a default) changes these on
purpose: record them again then, and say so."""
from __future__ import annotations

import json

import pytest

from orchestrator.execution.trainable import prefix_group
from orchestrator.planning.data import data_id
from orchestrator.planning.plan import group_key
from orchestrator.planning.store import fold_key
from orchestrator.spec.resolved import load_sweep

from support import REPO

RECORDED = json.loads((REPO / "tests" / "data" / "keys-c94896b.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_keys_of_every_paper_sweep_are_the_ones_stored_before(name, monkeypatch):
    monkeypatch.setenv("CASME2_ROOT", "/nonexistent/casme2")  # the keys never depend on where data lives
    monkeypatch.setenv("SAMM_ROOT", "/nonexistent/samm")
    sweep = load_sweep(REPO / "sweeps" / name)
    now = [{"dataset": t.dataset, "point": t.point, "seed": t.seed, "hash": t.hash, "data_id": data_id(t),
            "fold_key": fold_key(t.hash, "sub01", t.seed, "DATAKEY", "TESTKEY" if t.cross else None),
            "group": group_key(t, "DATAKEY", "TESTKEY" if t.cross else None),
            "prefix_group": prefix_group(t, "DATAKEY")} for t in sweep.trials]
    assert now == RECORDED[name]
