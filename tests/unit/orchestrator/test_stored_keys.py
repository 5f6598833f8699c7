"""Every fold stored before the orchestrator was regrouped is reused after it: the config hash, fold key,
group key, data id and frozen-prefix group of every trial of every sweep file in sweeps/ are the ones the
code wrote before (main at c94896b, recorded in tests/data/keys-c94896b.json by running that version's
`load_sweep` over these files). A change that alters results (a reading, a default) changes these on
purpose: record them again then, and say so.

Issue 17 made the literal reading of Eq. 10 MiAUCL's default (`model.miaucl_targets: literal`): every
trial trained with MiAUCL hashes anew, so no fold of the earlier (row-normalised) reading is reused for
it, while the earlier reading, now named `normalized`, keeps every key it had: its stored folds are reused
under that name. Trials of the other contrastive losses keep their keys under either."""
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


def _keys(name, overrides=()):
    sweep = load_sweep(REPO / "sweeps" / name, overrides)
    return sweep.trials, [
        {"dataset": t.dataset, "point": t.point, "seed": t.seed, "hash": t.hash, "data_id": data_id(t),
         "fold_key": fold_key(t.hash, "sub01", t.seed, "DATAKEY", "TESTKEY" if t.cross else None),
         "group": group_key(t, "DATAKEY", "TESTKEY" if t.cross else None),
         "prefix_group": prefix_group(t, "DATAKEY")} for t in sweep.trials]


@pytest.fixture(autouse=True)
def _roots(monkeypatch):
    monkeypatch.setenv("CASME2_ROOT", "/nonexistent/casme2")  # the keys never depend on where data lives
    monkeypatch.setenv("SAMM_ROOT", "/nonexistent/samm")


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_the_earlier_miaucl_reading_keeps_every_key_stored_before(name):
    _, now = _keys(name, ["model.miaucl_targets=normalized"])
    assert now == RECORDED[name]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_the_literal_default_changes_the_keys_of_miaucl_trials_only(name):
    trials, now = _keys(name)
    assert len(now) == len(RECORDED[name])
    for t, new, old in zip(trials, now, RECORDED[name], strict=True):
        if t.model.contrastive == "miaucl":
            assert t.model.miaucl_targets == "literal"
            assert new["hash"] != old["hash"] and new["fold_key"] != old["fold_key"]
            assert new["group"] != old["group"]
            assert (new["data_id"], new["prefix_group"]) == (old["data_id"], old["prefix_group"])  # data, prefix reused
        else:
            assert new == old


def test_compiling_the_step_keeps_every_key():
    """`training.compile` is how the step runs (torch.compile), not what it computes: out of the hash."""
    for name in sorted(RECORDED)[:3]:
        _, now = _keys(name, ["model.miaucl_targets=normalized", "training.compile=true"])
        assert now == RECORDED[name]
