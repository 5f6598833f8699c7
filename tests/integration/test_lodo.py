"""Leave-one-dataset-out (docs/protocol.md "Leave-one-dataset-out"): the `leave_one_dataset_out:` schema and
its errors, a unit's training datasets combined into one (PreparedDataset.combine), and the whole sweep end
to end on synthetic CASME II-, SAMM- and CAS(ME)^3-layout data (resumed: a second run trains nothing); then a
LOSO sweep on that CAS(ME)^3 data. Ray's path is the same for every reader and protocol (a unit's data are
combined before the trials start) and is covered by test_cross_dataset.py and test_sweep_ray.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from orchestrator.errors import ConfigError
from orchestrator.spec.resolved import load_sweep

from support import REPO
from support.data import fake_prepared

SHARED = [2, 4, 7, 12]


def write(tmp_path: Path, **over) -> Path:
    doc = {"name": "lodo", "workdir": str(tmp_path / "wd"),
           "datasets": {"casme2": {"reader": "casme2", "root": "/nowhere/c"},
                        "samm": {"reader": "samm", "root": "/nowhere/s"},
                        "casme2b": {"reader": "casme2", "root": "/nowhere/b"}},
           "leave_one_dataset_out": {},
           "model": {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 1},
           "training": {"alpha": 0.8, "beta": 0.8}}
    doc.update(over)
    path = tmp_path / "lodo.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))  # the datasets in the order written
    return path


# -- the schema ---------------------------------------------------------------------------------------
def test_one_unit_per_held_out_dataset_point_and_seed_on_the_shared_aus(tmp_path):
    sweep = load_sweep(write(tmp_path, variants={"full": {}, "no_gsd": {"model.gsd": False}}, seeds=[1, 2]))
    trials = sweep.trials
    assert len(trials) == 3 * 2 * 2
    assert list(dict.fromkeys(t.dataset for t in trials)) == ["samm+casme2b->casme2", "casme2+casme2b->samm",
                                                              "casme2+samm->casme2b"]
    for t in trials:
        assert t.aus == SHARED and t.cross and t.protocol == "lodo"
        assert t.reads == [t.train, t.test] and sweep.members(t.train) == t.train.split("+")
        assert t.train_readers == [sweep.datasets[n].reader for n in t.train.split("+")]
        assert t.reader == t.train_readers[0] and t.test_reader == sweep.datasets[t.test].reader
        assert t.scientific()["protocol"] == "lodo" and (t.training.alpha, t.training.beta) == (0.8, 0.8)
    assert len({t.hash for t in trials}) == len(trials)
    assert sweep.trials_of("casme2+samm->casme2b") == [t for t in trials if t.test == "casme2b"]
    with pytest.raises(ConfigError, match=r"no leave-one-dataset-out unit 'samm'"):
        sweep.trials_of("samm")


def test_two_datasets_make_the_cross_dataset_units_with_their_keys(tmp_path):
    """Leaving one of two datasets out is the cross-dataset protocol both ways: the same units, the same
    hashes (a stored unit of either sweep is reused by the other)."""
    ds = {"casme2": {"reader": "casme2", "root": "c"}, "samm": {"reader": "samm", "root": "s"}}
    lodo = load_sweep(write(tmp_path, datasets=ds, training={}))
    cross = load_sweep(write(tmp_path, datasets=ds, training={}, leave_one_dataset_out=None,
                             cross_dataset={"pairs": [{"train": "samm", "test": "casme2"},
                                                      {"train": "casme2", "test": "samm"}]}))
    assert [(t.dataset, t.hash) for t in lodo.trials] == [(t.dataset, t.hash) for t in cross.trials]
    assert all(t.protocol == "cross_dataset" for t in lodo.trials)


def test_casme3_pairs_and_units_use_the_aus_both_sides_share(tmp_path):
    """CAS(ME)^3 (AUs 1, 2, 4, 5, 7, 9, 10, 12, 14, 17) with CASME II shares 1, 2, 4, 7, 12, 14, 17; with all
    three datasets, 2, 4, 7, 12. Its alpha/beta default is CASME II's (docs/protocol.md, "Readings")."""
    ds = {"casme2": {"reader": "casme2", "root": "c"}, "casme3": {"reader": "casme3", "root": "m"}}
    pairs = {"pairs": [{"train": "casme3", "test": "casme2"}, {"train": "casme2", "test": "casme3"}]}
    cross = load_sweep(write(tmp_path, datasets=ds, training={}, leave_one_dataset_out=None, cross_dataset=pairs))
    assert [t.aus for t in cross.trials] == [[1, 2, 4, 7, 12, 14, 17]] * 2
    assert (cross.trials[0].training.alpha, cross.trials[0].training.beta) == (0.6, 1.0)
    three = load_sweep(write(tmp_path, datasets={**ds, "samm": {"reader": "samm", "root": "s"}}))
    assert {tuple(t.aus) for t in three.trials} == {tuple(SHARED)}
    assert load_sweep(REPO / "sweeps" / "lodo_quickstart.yaml").trials[0].aus == SHARED


def test_held_out_datasets_and_order_can_be_chosen(tmp_path):
    sweep = load_sweep(write(tmp_path, leave_one_dataset_out={"datasets": ["samm", "casme2", "casme2b"],
                                                              "test": ["casme2b"]}))
    assert [t.dataset for t in sweep.trials] == ["samm+casme2->casme2b"]


def test_alpha_beta_defaults_apply_where_the_training_datasets_agree(tmp_path):
    sweep = load_sweep(write(tmp_path, training={}, leave_one_dataset_out={"test": ["samm"]}))
    assert (sweep.trials[0].training.alpha, sweep.trials[0].training.beta) == (0.6, 1.0)  # CASME II's, twice
    with pytest.raises(ConfigError, match=r"leave_one_dataset_out samm\+casme2b->casme2, point base: the datasets "
                                          r"trained on have different default alpha/beta \(samm \(samm: alpha 1.0, "
                                          r"beta 0.6\), casme2b \(casme2: alpha 0.6, beta 1.0\)\); set "
                                          r"training.alpha and training.beta"):
        load_sweep(write(tmp_path, training={}))


@pytest.mark.parametrize("change, message", [
    ({"leave_one_dataset_out": {"datasets": ["casme2", "sam", "casme2b"]}},
     r"leave_one_dataset_out.datasets\[1\]: no dataset 'sam'; the file has \['casme2', 'casme2b', 'samm'\]"),
    ({"leave_one_dataset_out": {"datasets": ["casme2", "samm"]}},
     r"leave_one_dataset_out: datasets.casme2b is not in the protocol"),
    ({"leave_one_dataset_out": {"datasets": ["casme2"]},
      "datasets": {"casme2": {"reader": "casme2", "root": "c"}}},
     r"leave_one_dataset_out.datasets: leave-one-dataset-out needs at least two datasets"),
    ({"leave_one_dataset_out": {"test": ["samm", "samm"]}}, r"leave_one_dataset_out.test: 'samm' is listed twice"),
    ({"leave_one_dataset_out": {"test": ["x"]}}, r"leave_one_dataset_out.test\[0\]: 'x' is not among"),
    ({"leave_one_dataset_out": {"test": []}}, r"leave_one_dataset_out.test: name at least one dataset"),
    ({"leave_one_dataset_out": {"aus": [1, 2]}},
     r"leave_one_dataset_out.aus: AU 1 not among the AUs of datasets.samm \(\[2, 4, 7, 12\]"),
    ({"cross_dataset": {"pairs": [{"train": "samm", "test": "casme2"}]}},
     r"cross_dataset and leave_one_dataset_out are two protocols; keep one of them"),
    ({"datasets": {"casme2": {"reader": "casme2", "root": "c", "subjects": ["sub01"]},
                   "samm": {"reader": "samm", "root": "s"}}},
     r"datasets.casme2.subjects: leave-one-dataset-out trains and tests on every subject"),
    ({"datasets": {"casme2": {"reader": "casme2", "root": "c", "aus": [1, 14]},
                   "samm": {"reader": "samm", "root": "s"}}},
     r"leave_one_dataset_out: the datasets of the protocol share no AU"),
    ({"datasets": {"a+b": {"reader": "casme2", "root": "c"}, "samm": {"reader": "samm", "root": "s"}}},
     r"dataset name 'a\+b': use letters, digits"),
])
def test_bad_sections_are_refused_naming_the_key(tmp_path, change, message):
    path = write(tmp_path, **change)
    with pytest.raises(ConfigError, match=message) as e:
        load_sweep(path)
    assert str(e.value).startswith(str(path))


def test_combined_training_data_keeps_every_sample_apart():
    from preprocessing.dataset import PreparedDataset
    from preprocessing.errors import DatasetError

    a, b = fake_prepared(subjects=2, per_subject=3, seed=0), fake_prepared(subjects=3, per_subject=2, seed=1)
    a.skipped.append({"sample": "sub09/x", "reason": "r"})
    both = PreparedDataset.combine([("casme2", a), ("samm", b)])
    assert len(both) == 12 and both.reader == "casme2+samm"
    assert both.sample_ids[:6] == [f"casme2:{s}" for s in a.sample_ids]
    assert both.subjects[6:] == [f"samm:{s}" for s in b.subjects]
    np.testing.assert_array_equal(both.flow, np.concatenate([a.flow, b.flow]))
    np.testing.assert_array_equal(both.labels(SHARED), np.concatenate([a.labels(SHARED), b.labels(SHARED)]))
    assert both.skipped == [{"sample": "casme2:sub09/x", "reason": "r"}]
    assert both.key == PreparedDataset.combined_key([("casme2", a.key), ("samm", b.key)])
    assert both.key != PreparedDataset.combined_key([("samm", b.key), ("casme2", a.key)])  # order is training order
    small = fake_prepared(subjects=2, per_subject=2, size=64)
    with pytest.raises(DatasetError, match="different flow image sizes"):
        PreparedDataset.combine([("casme2", a), ("x", small)])


# -- the sweep end to end ----------------------------------------------------------------------------------
QUICKSTART = REPO / "sweeps" / "lodo_quickstart.yaml"
NAMES = ("casme2", "samm", "casme3")


def _small(tmp_path: Path):
    """--set items that make sweeps/lodo_quickstart.yaml small: 2 subjects x 3 samples per synthetic dataset,
    2 epochs, everything under tmp_path."""
    over = [f"workdir={tmp_path / 'wd'}", "training.epochs=2", "training.lr_step_epoch=1", "preprocessing.flow=dis"]
    for name in NAMES:
        over += [f"datasets.{name}.root={tmp_path / name}", f"datasets.{name}.synthetic.subjects=2",
                 f"datasets.{name}.synthetic.per_subject=3"]
    return over


@pytest.fixture(scope="module")
def lodo_run(tmp_path_factory, mlflow_db_template):
    """sweeps/lodo_quickstart.yaml made small, run twice as `microau-sweep run` does it (the units trained in
    this process, as a Ray trial trains them: a unit's data are combined on the driver before any trial
    starts, the same for both): (its folder, the sweep, the first run, the second run, folds trained)."""
    from orchestrator.execution.runner import run_sweep

    from support.sweeps import inprocess_training

    tmp_path = tmp_path_factory.mktemp("lodo")
    with pytest.MonkeyPatch.context() as mp:
        calls = inprocess_training(mp.setattr)
        sweep = load_sweep(QUICKSTART, _small(tmp_path))
        (tmp_path / "wd").mkdir()
        shutil.copy(mlflow_db_template, tmp_path / "wd" / "mlflow.db")
        first = run_sweep(sweep, quiet=True, progress=False, figures=False)  # figures: test_figures.py
        trained = calls["trained"]
        again = run_sweep(load_sweep(QUICKSTART, _small(tmp_path)), quiet=True, progress=False)
    return SimpleNamespace(path=tmp_path, sweep=sweep, first=first, again=again, trained=(trained, calls["trained"]))


@pytest.mark.slow
def test_lodo_sweep_end_to_end_on_synthetic_casme2_samm_and_casme3(lodo_run):
    """Synthetic data generated, prepared, each unit trained on the other two datasets together and tested on
    the third, MLflow and the results store written; the second run trains nothing."""
    from model.metrics import pooled_metrics
    from orchestrator.planning.data import prepare
    from orchestrator.planning.store import ResultsStore

    sweep, first, again = lodo_run.sweep, lodo_run.first, lodo_run.again
    assert first.trained == 3 and first.reused == 0 and not first.failed and lodo_run.trained == (3, 3)

    store = ResultsStore(sweep.paths.results)
    records = {store.get(k)["meta"]["dataset"]: store.get(k) for k in store.keys()}
    assert sorted(records) == ["casme2+casme3->samm", "casme2+samm->casme3", "samm+casme3->casme2"]
    data = {n: prepare(sweep, n, sweep.trials[0].preprocessing, progress=False) for n in NAMES}
    for label, rec in records.items():
        train, test = label.split("->")
        meta, r = rec["meta"], store.result(rec["key"])
        assert (meta["train"], meta["test"], meta["subject"]) == (train, test, "all")
        assert meta["test_data_key"] == data[test].key
        assert meta["data_key"] == prepare(sweep, train, sweep.trials[0].preprocessing, cached_only="key")
        assert r.sample_ids == data[test].sample_ids and r.subjects == [str(s) for s in data[test].subjects]
        assert r.aus == SHARED and np.array_equal(r.labels, data[test].labels(SHARED))
        assert r.n_train == sum(len(data[n]) for n in train.split("+")) == 12

    rows = {r["dataset"]: r for r in first.state.rows()}
    for label, row in rows.items():
        m = pooled_metrics([store.result(records[label]["key"])])
        assert row["protocol"] == "lodo" and row["complete"] and row["folds_total"] == 1
        assert (row["f1"], row["acc"], row["ci"]) == (m["f1"], m["acc"], m["ci"]) and row["ci"]["unit"] == "subject"

    # MLflow: each unit's runs take its combined training set and its test dataset as dataset inputs
    from mlflow import MlflowClient

    client = MlflowClient(sweep.tracking_uri)
    exp = client.get_experiment_by_name(sweep.experiment)
    for run in client.search_runs([exp.experiment_id], "tags.`microau.kind` = 'parent'"):
        train, test = run.data.tags["dataset"].split("->")
        got = {i.dataset.name: ({t.key: t.value for t in i.tags}["mlflow.data.context"], json.loads(i.dataset.source))
               for i in client.get_run(run.info.run_id).inputs.dataset_inputs}
        roots = " + ".join(str(sweep.datasets[n].root) for n in train.split("+"))
        assert got == {train: ("train", {"uri": roots}), test: ("test", {"uri": str(sweep.datasets[test].root)})}

    assert again.trained == 0 and again.reused == 3
    doc = json.loads(json.dumps(again.state.to_json(again.trained, again.reused), default=str))
    assert (doc["trained_folds"], doc["reused_folds"]) == (0, 3)
    # CAS(ME)^3's notes (lost frames, the J folder, onset == apex) once: each dataset is listed on its own
    # (each is held out once), so the combined training sets repeat none of them
    assert [n["dataset"] for n in doc["data_notes"]] == ["casme3"] and doc["data_notes"][0]["warnings"]


@pytest.mark.slow
def test_casme3_loso_sweep_end_to_end_and_resumed(lodo_run, monkeypatch):
    """sweeps/casme3_quickstart.yaml made small, through the CLI, on the LODO run's synthetic CAS(ME)^3 data
    and workdir (its data prepared already: the cache is shared by content): every fold trained on the
    reader's default AUs (5, 9, 10 with the regions beyond Table I), the table pooled, the reader's notes
    reported; a second run trains nothing."""
    from click.testing import CliRunner

    from orchestrator.cli import main

    from support.sweeps import inprocess_training

    calls = inprocess_training(monkeypatch.setattr)
    sets = [f"workdir={lodo_run.path / 'wd'}", f"datasets.casme3.root={lodo_run.path / 'casme3'}",
            "datasets.casme3.synthetic.subjects=2", "datasets.casme3.synthetic.per_subject=3",
            "training.epochs=2", "training.lr_step_epoch=1", "preprocessing.flow=dis"]
    args = [str(REPO / "sweeps" / "casme3_quickstart.yaml"), *[x for s in sets for x in ("--set", s)], "--json"]
    first = CliRunner().invoke(main, ["run", *args])
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert (doc["trained_folds"], doc["reused_folds"]) == (2, 0) and calls["trained"] == 2
    (row,) = doc["points"]
    assert row["dataset"] == "casme3" and row["protocol"] == "loso" and row["complete"] and row["folds_total"] == 2
    assert sorted(map(int, row["per_au"])) == [1, 2, 4, 5, 7, 9, 10, 12, 14, 17]
    (notes,) = doc["data_notes"]
    assert notes["dataset"] == "casme3" and notes["warnings"] and notes["apex_estimated"]

    again = CliRunner().invoke(main, ["run", *args])
    assert again.exit_code == 0, again.output
    doc2 = json.loads(again.stdout)
    assert (doc2["trained_folds"], doc2["reused_folds"]) == (0, 2) and calls["trained"] == 2
    assert doc2["points"][0]["f1"] == row["f1"]
