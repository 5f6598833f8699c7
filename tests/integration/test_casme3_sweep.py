"""A LOSO sweep on CAS(ME)^3 Part A end to end (sweeps/casme3_quickstart.yaml, made small): synthetic data in
its layout generated, read by the `casme3` reader (its notes reach the report), prepared, every fold trained on
its default AUs (5, 9 and 10 with the regions beyond Table I), the table pooled; a second run trains nothing.
The folds are trained in this process (support.sweeps.inprocess_training): Ray's path is the same for every
reader and is covered by test_sweep_ray.py."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from orchestrator.cli import main

from support import REPO
from support.sweeps import inprocess_training

QUICKSTART = REPO / "sweeps" / "casme3_quickstart.yaml"
AUS = [1, 2, 4, 5, 7, 9, 10, 12, 14, 17]


@pytest.mark.slow
def test_casme3_loso_sweep_end_to_end_and_resumed(tmp_path, monkeypatch, mlflow_db_template):
    calls = inprocess_training(monkeypatch.setattr)
    sets = [f"workdir={tmp_path / 'wd'}", f"datasets.casme3.root={tmp_path / 'casme3'}",
            "datasets.casme3.synthetic.subjects=3", "datasets.casme3.synthetic.per_subject=4",
            "training.epochs=2", "training.lr_step_epoch=1", "preprocessing.flow=dis"]
    args = [x for s in sets for x in ("--set", s)]
    (tmp_path / "wd").mkdir()
    shutil.copy(mlflow_db_template, tmp_path / "wd" / "mlflow.db")

    first = CliRunner().invoke(main, ["run", str(QUICKSTART), *args, "--json"])
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert (doc["trained_folds"], doc["reused_folds"]) == (3, 0) and calls["trained"] == 3
    (row,) = doc["points"]
    assert row["dataset"] == "casme3" and row["protocol"] == "loso" and row["complete"]
    assert sorted(map(int, row["per_au"])) == AUS and row["folds_total"] == 3
    (notes,) = doc["data_notes"]  # the reader's notes: lost frames, the J folder, onset == apex
    assert notes["dataset"] == "casme3" and notes["warnings"] and notes["apex_estimated"]

    again = CliRunner().invoke(main, ["run", str(QUICKSTART), *args, "--json"])
    assert again.exit_code == 0, again.output
    doc2 = json.loads(again.stdout)
    assert (doc2["trained_folds"], doc2["reused_folds"]) == (0, 3) and calls["trained"] == 3
    assert doc2["points"][0]["f1"] == row["f1"]
