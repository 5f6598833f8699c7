"""`microau-sweep plan`: the dry run of a sweep from its one plan (no training, no preprocessing)."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main

from support.sweeps import fake_training


@pytest.fixture
def sweep(tmp_path, mlflow_db_template):
    wd = tmp_path / "wd"
    wd.mkdir()
    shutil.copy(mlflow_db_template, wd / "mlflow.db")
    (tmp_path / "samm").mkdir()  # there, not prepared (a root that is not there: test_plan_names_an_unset_...)
    doc = {"name": "p", "workdir": str(wd), "datasets": {"samm": {"reader": "samm", "root": str(tmp_path / "samm")}},
           "variants": {"a": {}, "b": {"model.gsd": False}}, "resources": {"cpu": 1, "gpu": 0}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def plan(*args):
    r = CliRunner().invoke(main, ["plan", *map(str, args)])
    return r


def test_plan_of_an_unstored_sweep_says_the_data_is_prepared_first(sweep):
    r = plan(sweep, "--json")
    assert r.exit_code == 0, r.output + r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"sweep", "source", "workdir", "datasets", "points", "seeds", "groups", "folds",
                        "resources", "machine", "estimate"}
    (ds,) = doc["datasets"]
    assert ds["state"] == "to prepare" and ds["key"] is None and ds["reader"] == "samm"
    assert [p["label"] for p in doc["points"]] == ["a", "b"] and doc["seeds"] == [1]
    assert doc["folds"]["stored"] == 0 and doc["estimate"]["seconds"] is None
    text = plan(sweep)
    assert text.exit_code == 0 and "not prepared yet: `run` prepares it first" in text.stdout


def test_plan_of_a_stored_sweep_counts_stored_folds_and_estimates(sweep, monkeypatch):
    calls = fake_training(monkeypatch.setattr)
    assert CliRunner().invoke(main, ["run", str(sweep)]).exit_code == 0
    r = plan(sweep, "--json")
    assert r.exit_code == 0, r.output + r.stderr
    doc = json.loads(r.stdout)
    assert calls["prepared"] == 1  # by `run`, not by `plan`
    assert doc["datasets"][0]["state"] == "recorded" and doc["datasets"][0]["subjects"] == 3
    assert doc["folds"] == {"total": 6, "stored": 6, "to_train": 0}
    assert [(g["label"], g["folds_total"], g["folds_stored"], g["folds_to_train"]) for g in doc["groups"]] == \
        [("a", 3, 3, 0), ("b", 3, 3, 0)]
    assert doc["estimate"]["seconds"] == 0.0

    # --set changes the config hash: with 2 epochs every fold is to train again (no stored timing of it)
    r2 = plan(sweep, "--json", "--set", "training.epochs=2")
    assert r2.exit_code == 0, r2.output + r2.stderr
    doc2 = json.loads(r2.stdout)
    assert {g["config_hash"] for g in doc2["groups"]}.isdisjoint({g["config_hash"] for g in doc["groups"]})
    assert doc2["folds"] == {"total": 6, "stored": 0, "to_train": 6} and doc2["estimate"]["seconds"] is None
    assert "all: 6 / 0 / 6" in plan(sweep, "--set", "training.epochs=2").stdout


def test_plan_estimates_from_stored_fold_timings(sweep, monkeypatch):
    fake_training(monkeypatch.setattr)
    two = ["--set", "datasets.samm.subjects=['006', '007']"]
    assert CliRunner().invoke(main, ["run", str(sweep), *two]).exit_code == 0
    doc = json.loads(plan(sweep, "--json").stdout)
    assert doc["folds"] == {"total": 6, "stored": 4, "to_train": 2}
    slots = doc["machine"]["slots"]
    assert doc["estimate"]["seconds"] == pytest.approx(2 * 0.1 / slots)  # fake_result: 0.1 s per fold
    assert "concurrent slot" in plan(sweep).stdout


def test_plan_with_a_bad_set_key_names_it(sweep):
    r = plan(sweep, "--set", "training.epoch=2")
    assert r.exit_code == 1 and "training.epoch" in r.stderr and "unknown key" in r.stderr


def test_plan_names_an_unset_dataset_variable_as_run_does(tmp_path, monkeypatch):
    """`plan` cannot prepare a dataset whose `${VAR}` is unset (or whose root is missing) any more than `run`
    can: it says why with run's own message instead of "not prepared yet"."""
    from click.testing import CliRunner

    from orchestrator.cli import main

    from support import REPO

    monkeypatch.delenv("CASME2_ROOT", raising=False)
    monkeypatch.setenv("SAMM_ROOT", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    sweep = str(REPO / "sweeps" / "main.yaml")
    run = CliRunner().invoke(main, ["run", sweep])
    assert run.exit_code == 1
    plan = CliRunner().invoke(main, ["plan", sweep, "--json"])
    assert plan.exit_code == 0, plan.output
    rows = {d["name"]: d for d in json.loads(plan.stdout)["datasets"]}
    assert {d["state"] for d in rows.values()} == {"unreachable"}
    assert run.stderr == f"Error: {rows['casme2']['problem']}\n"
    assert rows["casme2"]["problem"].endswith("datasets.casme2.root: environment variable CASME2_ROOT is not set; "
                                              "export CASME2_ROOT=/path/to/the/folder and run again")
    assert rows["samm"]["problem"].endswith(f"datasets.samm.root: {tmp_path / 'nowhere'} does not exist; point it "
                                            f"at the samm folder (see docs/datasets.md)")
    text = CliRunner().invoke(main, ["plan", sweep]).stdout
    assert f"cannot be prepared here: {rows['casme2']['problem']}" in text
