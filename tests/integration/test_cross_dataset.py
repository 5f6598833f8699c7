"""The cross-dataset protocol (docs/protocol.md "Cross-dataset protocol"): the `cross_dataset:` schema and
its errors, the model-level `cross_dataset_fold` (one training path with LOSO), and the whole sweep end to
end on synthetic CASME II- and SAMM-layout data with Ray, the results store and MLflow (resumed: a second
run trains nothing)."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator.errors import ConfigError
from orchestrator.spec.resolved import load_sweep

from support import REPO
from support.data import fake_prepared

pytestmark = pytest.mark.ray  # the end-to-end test runs on the shared cluster of tests/support/ray.py

SHARED = [2, 4, 7, 12]


def write(tmp_path: Path, **over) -> Path:
    doc = {"name": "cross", "workdir": str(tmp_path / "wd"),
           "datasets": {"casme2": {"reader": "casme2", "root": "/nowhere/c"},
                        "samm": {"reader": "samm", "root": "/nowhere/s"}},
           "cross_dataset": {"pairs": [{"train": "casme2", "test": "samm"}, {"train": "samm", "test": "casme2"}]},
           "model": {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 1}}
    doc.update(over)
    path = tmp_path / "cross.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# -- the schema ---------------------------------------------------------------------------------------
def test_one_trial_per_pair_point_and_seed_on_the_shared_aus(tmp_path):
    spec = load_sweep(write(tmp_path, variants={"full": {}, "no_gsd": {"model.gsd": False}}, seeds=[1, 2]))
    trials = spec.trials
    assert len(trials) == 2 * 2 * 2
    assert {t.dataset for t in trials} == {"casme2->samm", "samm->casme2"}
    for t in trials:
        assert t.aus == SHARED  # CASME II's paper AUs x SAMM's
        assert t.cross and t.reads == [t.train, t.test] and t.dataset == f"{t.train}->{t.test}"
        assert t.reader == t.train and t.test_reader == t.test  # the dataset names are the readers here
        # alpha/beta: the paper's defaults of the dataset trained on
        assert (t.training.alpha, t.training.beta) == ((0.6, 1.0) if t.train == "casme2" else (1.0, 0.6))
    assert len({t.hash for t in trials}) == len(trials)  # direction, point and seed all change the hash
    assert spec.trials_of("casme2->samm") == [t for t in trials if t.train == "casme2"]
    with pytest.raises(ConfigError, match=r"no cross-dataset pair 'casme2'; the file has \['casme2->samm', "):
        spec.trials_of("casme2")


def test_a_loso_trial_hashes_as_before_the_protocol_existed(tmp_path):
    """LOSO folds stored by earlier versions stay valid: a LOSO trial's hashed part has no cross key."""
    spec = load_sweep(write(tmp_path, cross_dataset=None))
    t = spec.trials_of("samm")[0]
    assert not t.cross and t.reads == ["samm"]
    assert set(t.scientific()) == {"reader", "aus", "seed", "preprocessing", "model", "training"}


@pytest.mark.parametrize("change, message", [
    ({"cross_dataset": {"pairs": [{"train": "casme2", "test": "sam"}]}},
     r"cross_dataset.pairs\[0\].test: no dataset 'sam'; the file has \['casme2', 'samm'\]"),
    ({"cross_dataset": {"pairs": [{"train": "samm", "test": "samm"}]}},
     r"cross_dataset.pairs\[0\]: trains and tests on 'samm'"),
    ({"cross_dataset": {"pairs": [{"train": "samm", "test": "casme2"}, {"train": "samm", "test": "casme2"}]}},
     r"cross_dataset.pairs\[1\]: samm->casme2 is listed twice"),
    ({"cross_dataset": {"pairs": [{"train": "samm", "test": "casme2"}], "aus": [1, 2]}},
     r"cross_dataset.aus: AU 1 not among the AUs of datasets.samm \(\[2, 4, 7, 12\]: the default AUs of "
     r"reader samm\); list only AUs every dataset of its pairs evaluates \(here \[2, 4, 7, 12\]\)"),
    ({"cross_dataset": {"pairs": [{"train": "samm", "test": "casme2"}], "aus": []}},
     r"cross_dataset.aus: give at least one AU"),
    ({"cross_dataset": {"pairs": []}}, r"cross_dataset.pairs: List should have at least 1 item"),
    ({"cross_dataset": {"pairs": [{"train": "samm", "test": "casme2", "tset": "x"}]}},
     r"unknown key 'cross_dataset.pairs.0.tset'"),
    ({"cross_dataset": {"pairs": [{"train": "samm"}]}}, r"missing key 'cross_dataset.pairs.0.test'"),
    ({"cross_dataset": {"pairs": [{"train": "samm", "test": "casme2"}]},
      "datasets": {"casme2": {"reader": "casme2", "root": "c"}, "samm": {"reader": "samm", "root": "s"},
                   "other": {"reader": "samm", "root": "o"}}},
     r"cross_dataset: datasets.other is in no pair; add a pair with it or remove it"),
    ({"datasets": {"casme2": {"reader": "casme2", "root": "c", "subjects": ["sub01"]},
                   "samm": {"reader": "samm", "root": "s"}}},
     r"datasets.casme2.subjects: the cross-dataset protocol trains on every subject of one dataset"),
    ({"datasets": {"casme2": {"reader": "casme2", "root": "c", "aus": [1, 14]},
                   "samm": {"reader": "samm", "root": "s"}}},
     r"cross_dataset: the datasets of its pairs share no AU \(datasets.casme2: \[1, 14\]; datasets.samm: "
     r"\[2, 4, 7, 12\]\)"),
])
def test_bad_cross_dataset_sections_are_refused_naming_the_key(tmp_path, change, message):
    path = write(tmp_path, **change)
    with pytest.raises(ConfigError, match=message) as e:
        load_sweep(path)
    assert str(e.value).startswith(str(path))


@pytest.mark.parametrize("command", ["plan", "run", "report", "fold"])
def test_a_bad_cross_dataset_section_is_an_error_line_of_every_command(tmp_path, command):
    from click.testing import CliRunner

    from orchestrator.cli import main

    path = write(tmp_path, cross_dataset={"pairs": [{"train": "casme2", "test": "smm"}]})
    res = CliRunner().invoke(main, [command, str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr == (f"Error: {path}: cross_dataset.pairs[0].test: no dataset 'smm'; the file has "
                          f"['casme2', 'samm']\n")
    assert not (tmp_path / "wd").exists()  # nothing written


def test_a_dataset_aus_list_bounds_the_shared_aus(tmp_path):
    ds = {"casme2": {"reader": "casme2", "root": "c", "aus": [2, 4, 12, 14]}, "samm": {"reader": "samm", "root": "s"}}
    assert load_sweep(write(tmp_path, datasets=ds)).trials[0].aus == [2, 4, 12]
    with pytest.raises(ConfigError, match=r"AU 7 not among the AUs of datasets.casme2 \(\[2, 4, 12, 14\]: its "
                                          r"`aus:`\)"):
        load_sweep(write(tmp_path, datasets=ds, cross_dataset={"pairs": [{"train": "casme2", "test": "samm"}],
                                                                "aus": SHARED}))


def test_the_shipped_cross_dataset_sweeps_read():
    for name in ("cross_dataset", "cross_quickstart"):
        spec = load_sweep(REPO / "sweeps" / f"{name}.yaml")
        assert [t.dataset for t in spec.trials] == ["casme2->samm", "samm->casme2"]
        assert all(t.aus == SHARED for t in spec.trials)


# -- the model: one training path ------------------------------------------------------------------------
def _spec(epochs=2):
    from types import SimpleNamespace

    from model.config import ModelConfig, TrainConfig

    return SimpleNamespace(reader="casme2", aus=SHARED, seed=1,
                           model=ModelConfig(arch="microau-tiny", pretrained="none", trainable_blocks=1),
                           training=TrainConfig(epochs=epochs, batch_size=8, lr_step_epoch=1, device="cpu"))


def _samm_like(d, prefix: str = "0"):
    """`d` as another dataset: SAMM reader, its own key, subjects and sample ids."""
    subj = [f"{prefix}{s[-2:]}" for s in d.subjects]
    return replace(d, reader="samm", key=d.key + "-samm", subjects=subj,
                   sample_ids=[f"{s}/{i.split('/')[1]}" for s, i in zip(subj, d.sample_ids, strict=False)])


def _joined(train, test):
    """Both datasets as one, the test dataset's samples all of one subject `TEST` (after the train ones)."""
    from preprocessing.dataset import PreparedDataset

    cat = lambda a, b: list(a) + list(b)  # noqa: E731
    return PreparedDataset(reader=train.reader, key=train.key + "+" + test.key,
                           sample_ids=cat(train.sample_ids, test.sample_ids),
                           subjects=cat(train.subjects, ["TEST"] * len(test)),
                           flow=np.concatenate([train.flow, test.flow]),
                           landmarks=np.concatenate([train.landmarks, test.landmarks]),
                           au_sets=cat(train.au_sets, test.au_sets), emotions=cat(train.emotions, test.emotions),
                           mer=cat(train.mer, test.mer))


def test_cross_dataset_fold_is_train_fold_with_the_test_dataset_held_out():
    """Train on all 9 samples of one dataset (a batch of 8 + 1), test on all of another: exactly what
    `train_fold` computes on the two joined with the test dataset as the held-out subject (one training
    path), with the test dataset's samples, subjects and labels (its AUs picked by number)."""
    from model import FoldError, compute_prefix, cross_dataset_fold, train_fold

    spec = _spec()
    train = fake_prepared(subjects=3, per_subject=3, seed=0)
    test = _samm_like(fake_prepared(subjects=2, per_subject=3, seed=1))
    p_train, p_test = compute_prefix(spec.model, train, SHARED), compute_prefix(spec.model, test, SHARED)
    r = cross_dataset_fold(spec, train, test, train_prefix=p_train, test_prefix=p_test)
    assert r.sample_ids == test.sample_ids and r.subjects == test.subjects and r.test_subject == "all"
    assert r.aus == SHARED and np.array_equal(r.labels, test.labels(SHARED))
    assert r.labels.sum() > 0 and r.n_train == 9 and r.probs.shape == (6, 4)
    assert r.mer_labels == test.mer
    assert (r.extras["train_data"], r.extras["test_data"]) == (train.key, test.key)

    both = _joined(train, test)
    ref = train_fold(spec, both, "TEST")
    assert ref.sample_ids == r.sample_ids and ref.n_train == r.n_train
    np.testing.assert_allclose(r.probs, ref.probs, atol=1e-5)
    assert r.loss_curve.keys() == ref.loss_curve.keys()
    np.testing.assert_allclose(r.loss_curve["total"], ref.loss_curve["total"], rtol=1e-5)

    with pytest.raises(FoldError, match=r"the prefix passed for dataset samm \(.*\) was computed for another data"):
        cross_dataset_fold(spec, train, test, train_prefix=p_train, test_prefix=p_train)
    other = compute_prefix(spec.model, test, [2, 4, 12])
    with pytest.raises(FoldError, match="computed for another aus"):
        cross_dataset_fold(spec, train, test, train_prefix=p_train, test_prefix=other)
    with pytest.raises(FoldError, match="fewer than 2 training samples"):
        cross_dataset_fold(spec, train.subset([0]), test)


# -- the sweep end to end ----------------------------------------------------------------------------------
QUICKSTART = REPO / "sweeps" / "cross_quickstart.yaml"


def _small(tmp_path: Path):
    """--set items that make sweeps/cross_quickstart.yaml small: 2 subjects x 3 samples per synthetic
    dataset, 2 epochs, everything under tmp_path."""
    over = [f"workdir={tmp_path / 'wd'}", f"datasets.casme2.root={tmp_path / 'casme2'}",
            f"datasets.samm.root={tmp_path / 'samm'}", "training.epochs=2", "training.lr_step_epoch=1",
            "preprocessing.flow=dis"]
    for name in ("casme2", "samm"):
        over += [f"datasets.{name}.synthetic.subjects=2", f"datasets.{name}.synthetic.per_subject=3"]
    return over


def _cli(command: str, tmp_path: Path, *args):
    from click.testing import CliRunner

    from orchestrator.cli import main

    sets = [x for o in _small(tmp_path) for x in ("--set", o)]
    res = CliRunner().invoke(main, [command, str(QUICKSTART), *sets, *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # the shared cluster's tests: one after another, in one worker
def test_cross_dataset_sweep_end_to_end_on_synthetic_casme2_and_samm(cluster_to_join, tmp_path,
                                                                       mlflow_db_template):
    """As `microau-sweep run --address` does it: synthetic data generated, prepared, the two-node cluster of
    tests/support/ray.py joined for the units to train (one at a time: one worker process), MLflow and the
    results store written; the second run trains nothing (the embedded Ray of a `run` without an address:
    test_ray_conventions.py, test_gpu_check.py)."""
    import ray
    from mlflow import MlflowClient

    from model.metrics import pooled_metrics
    from orchestrator.execution.runner import run_sweep
    from orchestrator.planning.data import prepare
    from orchestrator.planning.store import ResultsStore

    over = [*_small(tmp_path), "max_concurrent=1"]  # a worker process trains both units (the first imports)
    spec = load_sweep(QUICKSTART, over)
    (tmp_path / "wd").mkdir()
    shutil.copy(mlflow_db_template, tmp_path / "wd" / "mlflow.db")
    first = run_sweep(spec, address=cluster_to_join.address, quiet=True, progress=False,
                      figures=False)  # figures: test_figures.py
    assert not ray.is_initialized()  # joined for the run, left at its end
    assert first.trained == 2 and first.reused == 0 and not first.failed

    # the stored units: every test sample of the other dataset, its subjects and labels on AUs 2, 4, 7, 12
    store = ResultsStore(spec.paths.results)
    records = {store.get(k)["meta"]["dataset"]: store.get(k) for k in store.keys()}
    assert sorted(records) == ["casme2->samm", "samm->casme2"]
    data = {n: prepare(spec, n, spec.trials[0].preprocessing, progress=False) for n in ("casme2", "samm")}
    for label, rec in records.items():
        train, test = label.split("->")
        meta, r = rec["meta"], store.result(rec["key"])
        assert (meta["train"], meta["test"], meta["subject"]) == (train, test, "all")
        assert (meta["data_key"], meta["test_data_key"]) == (data[train].key, data[test].key)
        assert r.sample_ids == data[test].sample_ids and r.subjects == [str(s) for s in data[test].subjects]
        assert r.aus == SHARED and np.array_equal(r.labels, data[test].labels(SHARED))
        assert r.n_train == len(data[train]) == 6
        assert set(r.subjects) == ({"sub01", "sub02"} if test == "casme2" else {"006", "007"})

    # the table: a row per pair, pooled over the test samples, CI over the test subjects
    rows = {r["dataset"]: r for r in first.state.rows()}
    for label, row in rows.items():
        m = pooled_metrics([store.result(records[label]["key"])])
        assert row["protocol"] == "cross_dataset" and row["complete"] and row["folds_total"] == 1
        assert (row["f1"], row["acc"], row["ci"]) == (m["f1"], m["acc"], m["ci"]) and row["ci"]["unit"] == "subject"
        assert sorted(row["per_au"]) == SHARED

    # MLflow: a parent per (pair, point, seed), a child per unit, with its predictions
    client = MlflowClient(spec.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("cross_quickstart").experiment_id])
    parents = {r.data.tags["dataset"]: r for r in runs if r.data.tags.get("microau.kind") == "parent"}
    children = [r for r in runs if r.data.tags.get("microau.kind") == "fold"]
    assert sorted(parents) == sorted(records) and len(children) == 2
    assert all(p.info.status == "FINISHED" and p.data.params["test"] == k.split("->")[1] for k, p in parents.items())
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parents[c.data.tags["dataset"]].info.run_id
        assert c.data.metrics["n_test"] == 6

    # resumed like folds: a second run trains nothing and gives the same table; `plan` and `report` agree
    again = run_sweep(load_sweep(QUICKSTART, over), address=cluster_to_join.address, quiet=True,
                      progress=False)
    assert again.trained == 0 and again.reused == 2
    assert json.dumps(again.state.rows(), default=str) == json.dumps(first.state.rows(), default=str)
    assert len(client.search_runs([client.get_experiment_by_name("cross_quickstart").experiment_id])) == 4
    plan = _cli("plan", tmp_path)
    assert [(g["dataset"], g["folds_total"], g["folds_stored"]) for g in plan["groups"]] == \
        [("casme2->samm", 1, 1), ("samm->casme2", 1, 1)]
    assert [(d["name"], d["state"], d["samples"]) for d in plan["datasets"]] == \
        [("casme2", "prepared", 6), ("samm", "prepared", 6)]
    report = _cli("report", tmp_path)
    assert [(r["dataset"], r["f1"]) for r in report["points"]] == [(r["dataset"], r["f1"]) for r in first.state.rows()]

    # `fold --train --test` (in-process, no Ray) gives the stored predictions of the unit bit for bit
    doc = _cli("fold", tmp_path, "--train", "samm", "--test", "casme2")
    stored = records["samm->casme2"]["result"]
    assert doc["dataset"] == "samm->casme2" and [p["id"] for p in doc["predictions"]] == stored["sample_ids"]
    got = [[p["probs"][f"AU{a}"] for a in SHARED] for p in doc["predictions"]]
    assert np.array_equal(np.array(got, dtype=np.float32), np.array(stored["probs"], dtype=np.float32))


def test_train_refuses_a_cross_dataset_sweep(tmp_path):
    """`train` trains a LOSO sweep's point on one whole dataset; a cross sweep is a usage error, not a
    'no point' error from the expansion."""
    from click.testing import CliRunner

    from orchestrator.cli import main

    res = CliRunner().invoke(main, ["train", str(REPO / "sweeps" / "cross_quickstart.yaml"), "--point", "0",
                                    "--set", f"workdir={tmp_path / 'wd'}"])
    assert res.exit_code == 2 and "runs the cross-dataset protocol" in res.output
    assert not (tmp_path / "wd").exists()
