"""Results store, MLflow tracker and sweep state with hand-made fold results (no training, no Ray)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import accuracy_score, f1_score

from model.result import FoldResult
from orchestrator.errors import StoreError
from orchestrator.execution.state import SweepState
from orchestrator.planning.plan import expand, make_plan
from orchestrator.planning.store import ResultsStore, atomic_write_text, fold_key
from orchestrator.reporting.report import predictions_csv
from orchestrator.spec.resolved import load_sweep
from orchestrator.tracking.client import Tracker, flat_metrics

from support.sweeps import AUS, by_data_id, fake_datasets, fake_result

SUBJECTS = ["006", "007", "008"]


@pytest.fixture
def spec(tmp_path):
    doc = {"name": "unit", "workdir": str(tmp_path / "wd"),
           "datasets": {"samm": {"reader": "samm", "root": "/nowhere"}},
           "variants": {"a": {}, "b": {"model.gsd": False}}}
    p = tmp_path / "unit.yaml"
    p.write_text(yaml.safe_dump(doc))
    return load_sweep(p)


def test_fold_key_depends_on_every_part():
    base = fold_key("c", "s1", 1, "d")
    assert base == fold_key("c", "s1", 1, "d")
    assert len({base, fold_key("c2", "s1", 1, "d"), fold_key("c", "s2", 1, "d"), fold_key("c", "s1", 2, "d"),
                fold_key("c", "s1", 1, "d2")}) == 5


def test_store_roundtrip_and_errors_name_the_file(tmp_path):
    store = ResultsStore(tmp_path / "results")
    assert not store.has("k1") and list(store.keys()) == []
    meta = {"dataset": "samm", "point_label": "a", "seed": 1, "subject": "s"}
    store.put("k1", {"x": [1, 2]}, meta)
    assert store.has("k1") and store.get("k1")["result"] == {"x": [1, 2]}
    assert list(store.keys()) == ["k1"]
    store.path("bad").write_text("{not json")
    with pytest.raises(StoreError, match=r"bad\.json: unreadable results file"):
        store.get("bad")
    store.put("k2", {"x": 1}, {"subject": "s"})
    with pytest.raises(StoreError, match=r"k2\.json: results record misses meta.dataset, meta.point_label"):
        store.get("k2")
    with pytest.raises(StoreError, match=r"k1\.json: results record is incomplete \(KeyError"):
        store.result("k1")  # valid JSON, but the FoldResult misses its fields
    with pytest.raises(StoreError, match="no stored fold"):
        store.get("missing")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    target = tmp_path / "out" / "r.json"
    with pytest.raises(TypeError):
        atomic_write_text(target, Boom())  # write() rejects it after the temp file exists
    assert not target.exists() and list(target.parent.iterdir()) == []
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_text(target, Boom())
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["r.json"]


def test_flat_metrics_names():
    pooled = {"f1": 0.5, "acc": 0.8, "per_au": {2: {"f1": 0.1, "acc": 0.9}},
              "ci": {"f1": [0.4, 0.6], "acc": [0.7, 0.9], "level": 0.95, "n_boot": 1000, "unit": "subject"},
              "mer": {"uf1": 0.3, "uar": 0.4, "acc": 0.5, "n": 4, "ci": {"uf1": [0.1, 0.5]}},
              "per_fold": {"f1_mean_of_folds": 0.45, "folds": {"006": {"f1": 1.0}}}, "aus": [2, 4]}
    assert flat_metrics(pooled) == {
        "f1": 0.5, "acc": 0.8, "f1_AU2": 0.1, "acc_AU2": 0.9, "ci_f1_low": 0.4, "ci_f1_high": 0.6,
        "ci_acc_low": 0.7, "ci_acc_high": 0.9, "mer_uf1": 0.3, "mer_uar": 0.4, "mer_acc": 0.5, "mer_n": 4.0,
        "mer_ci_uf1_low": 0.1, "mer_ci_uf1_high": 0.5, "per_fold_f1_mean_of_folds": 0.45}


def _state(spec, store, tracking=True):
    plan = make_plan(spec, fake_datasets(spec, {"samm": SUBJECTS}, {"samm": "datakey"}), store=store)
    return plan.folds, SweepState(plan, tracking=tracking)


def test_state_tracks_pools_and_marks_failed_points_incomplete(spec):
    from mlflow import MlflowClient

    store = ResultsStore(spec.paths.results)
    folds, state = _state(spec, store)
    assert len(folds) == 6 and len(state.groups) == 2
    state.begin(folds)
    for f in folds:
        if f.trial.variant == "b" and f.subject == "008":
            state.started(f.key)
            state.failed(f.key, "RuntimeError: boom")
        else:
            state.finished(f.key, fake_result(f.subject), {"node_id": "n1", "node_ip": "10.0.0.1"})
    state.close()
    rows = {r["label"]: r for r in state.rows()}
    assert rows["a"]["complete"] and rows["a"]["folds_done"] == 3
    assert not rows["b"]["complete"] and rows["b"]["folds_done"] == 2 and rows["b"]["folds_total"] == 3
    assert rows["b"]["failed"] == [{"subject": "008", "error": "RuntimeError: boom"}]

    # pooled F1/ACC of point a equal sklearn on the concatenated stored predictions
    recs = [store.get(f.key)["result"] for f in folds if f.trial.variant == "a"]
    y = np.concatenate([np.array(r["labels"]) for r in recs])
    p = (np.concatenate([np.array(r["probs"]) for r in recs]) > 0.5).astype(int)
    f1 = np.mean([f1_score(y[:, j], p[:, j], zero_division=0) for j in range(len(AUS))])
    acc = np.mean([accuracy_score(y[:, j], p[:, j]) for j in range(len(AUS))])
    assert rows["a"]["f1"] == pytest.approx(f1, abs=1e-12) and rows["a"]["acc"] == pytest.approx(acc)

    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("unit")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("microau.kind") == "parent"]
    children = [r for r in runs if r.data.tags.get("microau.kind") == "fold"]
    assert len(parents) == 2 and len(children) == 5
    by_label = {r.data.tags["point"]: r for r in parents}
    assert by_label["a"].data.metrics["f1"] == pytest.approx(rows["a"]["f1"])
    assert by_label["a"].data.metrics["folds_done"] == 3 and by_label["a"].info.status == "FINISHED"
    assert by_label["b"].data.tags["complete"] == "false" and by_label["b"].info.status == "FAILED"
    assert by_label["b"].data.tags["failed_subjects"] == "008"
    assert set(by_label["a"].data.metrics) == set(by_label["b"].data.metrics)  # comparable side by side
    assert by_label["a"].data.params["model.gsd"] == "True" and by_label["b"].data.params["model.gsd"] == "False"
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] in {r.info.run_id for r in parents}
    path = client.download_artifacts(child.info.run_id, "predictions.csv", str(spec.paths.workdir / "dl"))
    import pandas as pd

    df = pd.read_csv(path, dtype={"subject": str})
    assert list(df.columns[:5]) == ["sample_id", "subject", "prob_AU2", "label_AU2", "pred_AU2"]
    assert len(df) == 5 and "mer_pred" in df.columns

    # a second driver finds the same runs by tag: nothing duplicated; the failed fold is then trained
    folds2, state2 = _state(spec, store)
    todo = [f for f in folds2 if not store.has(f.key)]
    assert len(todo) == 1
    state2.begin(todo)
    state2.finished(todo[0].key, fake_result(todo[0].subject), {})
    state2.close()
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len([r for r in runs if r.data.tags.get("microau.kind") == "parent"]) == 2
    assert len([r for r in runs if r.data.tags.get("microau.kind") == "fold"]) == 6
    assert all(r["complete"] for r in state2.rows())


def test_begin_restores_children_missing_from_mlflow(spec):
    """A driver killed between storing a fold and tracking it: the next run tracks the stored fold."""
    from mlflow import MlflowClient

    store = ResultsStore(spec.paths.results)
    folds = expand(spec, *by_data_id(spec, {"samm": SUBJECTS}, {"samm": "datakey"}))
    store.put(folds[0].key, fake_result(folds[0].subject), folds[0].meta())  # stored, never tracked
    state = SweepState(make_plan(spec, fake_datasets(spec, {"samm": SUBJECTS}, {"samm": "datakey"}), store=store))
    state.begin([f for f in folds if not store.has(f.key)])
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("unit")
    kids = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("microau.kind") == "fold"]
    assert [r.data.tags["microau.fold"] for r in kids] == [folds[0].key]


def test_report_json_shape_and_csv(spec):
    store = ResultsStore(spec.paths.results)
    folds, state = _state(spec, store, tracking=False)
    state.begin(folds)
    for f in folds:
        state.finished(f.key, fake_result(f.subject), {})
    doc = json.loads(json.dumps(state.to_json(6, 0)))
    assert doc["trained_folds"] == 6 and doc["reused_folds"] == 0
    p = doc["points"][0]
    assert {"dataset", "params", "seed", "folds_done", "folds_total", "f1", "acc", "per_au", "ci",
            "mer"} <= set(p)
    assert set(p["per_au"]) == {"2", "4", "7", "12"} and set(p["per_au"]["2"]) == {"f1", "acc"}
    paths = state.write_reports()
    import pandas as pd

    df = pd.read_csv(paths["csv"])
    assert list(df["label"]) == ["a", "b"] and "f1_AU12" in df.columns and "ci_f1_low" in df.columns
    assert json.loads(open(paths["json"]).read())["points"][1]["label"] == "b"


def test_predictions_csv_has_one_row_per_sample():
    r = FoldResult.from_dict(fake_result("006"))
    lines = predictions_csv(r).strip().splitlines()
    assert len(lines) == 1 + 5 and lines[0].startswith("sample_id,subject,prob_AU2,label_AU2,pred_AU2")


def test_tracker_reuses_the_experiment(spec):
    a = Tracker(spec).experiment_id
    assert Tracker(spec).experiment_id == a


def test_live_view_shows_progress_per_point(spec):
    from rich.console import Console

    from orchestrator.reporting.view import LiveView

    store = ResultsStore(spec.paths.results)
    folds, state = _state(spec, store, tracking=False)
    state.begin(folds)
    state.finished(folds[0].key, fake_result(folds[0].subject), {})
    state.started(folds[1].key)
    state.progress(folds[1].key, {"epoch": 7})
    state.failed(folds[4].key, "boom")
    console = Console(record=True, width=140)
    console.print(LiveView(state, console))
    text = console.export_text()
    assert "F1 so far" in text and "remaining" in text and "trained 1/6" in text
    assert f"{folds[1].subject}@7" in text  # the running fold and its epoch
    cells = {ln.split("│")[2].strip(): [c.strip() for c in ln.split("│")[3:-1]]
             for ln in text.splitlines() if ln.startswith("│ samm")}
    f1_a = f"{state.groups[folds[0].group].pooled['f1']:.3f}"
    assert cells == {"a": ["1", "1", "1", "0", "3", f1_a], "b": ["1", "0", "0", "1", "3", "-"]}


def test_compare_two_points_paired_bootstrap(spec):
    from orchestrator.errors import ConfigError
    from orchestrator.reporting.report import compare_points

    store = ResultsStore(spec.paths.results)
    folds, state = _state(spec, store, tracking=False)
    state.begin(folds)
    for f in folds:
        seed = 0 if f.trial.variant == "a" else 1  # different predictions per point, same samples
        state.finished(f.key, fake_result(f.subject, seed=seed), {})
    (c,) = compare_points(state, 0, 1)
    rows = state.rows()
    assert (c["a"], c["b"], c["subjects"]) == ("a", "b", 3)
    assert c["diff"] == pytest.approx(rows[0]["f1"] - rows[1]["f1"])
    assert len(c["ci"]) == 2 and c["ci"][0] <= c["ci"][1]
    with pytest.raises(ConfigError, match="points are 0..1"):
        compare_points(state, 0, 2)
    state.failed(folds[0].key, "x")
    store.path(folds[0].key).unlink()
    state.groups[folds[0].group].done -= 1
    with pytest.raises(ConfigError, match="has 2/3 folds"):
        compare_points(state, 0, 1)


def test_rerun_of_a_finished_sweep_writes_nothing_to_mlflow(spec):
    from mlflow import MlflowClient

    store = ResultsStore(spec.paths.results)
    folds, state = _state(spec, store)
    state.begin(folds)
    for f in folds:
        state.finished(f.key, fake_result(f.subject), {})
    state.close()
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("unit")

    def history():
        runs = client.search_runs([exp.experiment_id], "tags.`microau.kind` = 'parent'")
        return {r.info.run_id: (r.info.status, len(client.get_metric_history(r.info.run_id, "f1")))
                for r in runs}

    before = history()
    assert all(status == "FINISHED" for status, _ in before.values())
    _, again = _state(spec, store)
    again.begin([])
    again.close()
    assert history() == before and [r["f1"] for r in again.rows()] == [r["f1"] for r in state.rows()]


def test_mlflow_failure_does_not_stop_the_sweep_and_is_repaired_next_run(spec, monkeypatch, capsys):
    from mlflow import MlflowClient

    store = ResultsStore(spec.paths.results)
    folds, state = _state(spec, store)
    state.begin(folds)

    def down(*a, **k):
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(Tracker, "log_fold", down)
    state.finished(folds[0].key, fake_result(folds[0].subject), {})
    assert store.has(folds[0].key) and state.tracking_errors
    assert "run the sweep again later" in capsys.readouterr().err
    monkeypatch.undo()
    _, again = _state(spec, store)
    again.begin([f for f in folds if not store.has(f.key)])
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("unit")
    kids = client.search_runs([exp.experiment_id], "tags.`microau.kind` = 'fold'")
    assert [r.data.tags["microau.fold"] for r in kids] == [folds[0].key]


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", "missing-field", "other-key", ""])
def test_damaged_record_is_set_aside_named_and_its_fold_retrained(spec, capsys, damage):
    """A corrupt or incomplete fold record does not block `report`/`run`: it is moved to
    results/damaged/ (kept), named in a warning, and its fold counts as not stored."""
    store = ResultsStore(spec.paths.results)
    folds, state = _state(spec, store, tracking=False)
    state.begin(folds)
    for f in folds:
        state.finished(f.key, fake_result(f.subject), {})
    bad = folds[1]
    path = store.path(bad.key)
    if damage == "missing-field":
        rec = json.loads(path.read_text())
        del rec["result"]["probs"]
        path.write_text(json.dumps(rec))
    elif damage == "other-key":
        rec = json.loads(path.read_text())
        rec["key"] = "somethingelse"
        path.write_text(json.dumps(rec))
    else:
        path.write_text(damage)
    before = path.read_bytes()
    capsys.readouterr()
    _, again = _state(spec, ResultsStore(store.root), tracking=False)  # what `report` and `run` build
    again.begin([])
    err = capsys.readouterr().err
    assert f"{bad.key}.json" in err and "moved to" in err and "trained again" in err
    assert not path.exists() and (store.root / "damaged" / f"{bad.key}.json").read_bytes() == before
    rows = {r["label"]: r for r in again.rows()}
    assert rows["a"]["folds_done"] == 2 and not rows["a"]["complete"] and rows["b"]["complete"]
    assert [f.key for f in folds if not again.store.has(f.key)] == [bad.key]  # what `run` trains again


def test_unwritable_results_folder_is_found_before_training(tmp_path):
    from orchestrator.planning.store import ensure_writable

    (tmp_path / "results").write_text("a file where the folder should be")
    with pytest.raises(StoreError,
                       match=r"results: a file stands where the results folder should be.* Nothing was trained"):
        ResultsStore(tmp_path / "results").check_writable()
    ensure_writable(tmp_path / "ok", "reports folder", "x")
    assert (tmp_path / "ok").is_dir() and not list((tmp_path / "ok").iterdir())


def test_text_si_reaches_the_table_json_csv_and_mlflow_parents(spec):
    """Table III TextSi, pooled by model.metrics (mean over AUs, then folds): a `text_si` per point in
    the JSON, a CSV column, a TextSi table column and a `text_si` metric on each MLflow parent."""
    from mlflow import MlflowClient
    from rich.console import Console

    from orchestrator.reporting.view import points_table

    store = ResultsStore(spec.paths.results)
    folds, state = _state(spec, store)
    state.begin(folds)
    sims = {"006": [0.9, 0.8, 0.7, 0.6], "007": [0.5, 0.5, 0.5, 0.5], "008": [-0.1, 0.1, 0.3, 0.5]}
    for f in folds:
        state.finished(f.key, fake_result(f.subject, text_similarity=sims[f.subject]), {})
    state.close()
    want = (0.75 + 0.5 + 0.2) / 3
    doc = json.loads(json.dumps(state.to_json(6, 0)))
    assert [p["text_si"] for p in doc["points"]] == [pytest.approx(want, abs=1e-12)] * 2
    paths = state.write_reports()
    import pandas as pd

    assert [p["text_si"] for p in json.loads(open(paths["json"]).read())["points"]] == [pytest.approx(want)] * 2
    assert pd.read_csv(paths["csv"])["text_si"].tolist() == [pytest.approx(want, rel=1e-5)] * 2
    out = Console(record=True, width=200)
    out.print(points_table(state.rows(), "samm"))
    text = out.export_text()  # (and clears the recording)
    assert "TextSi" in text and f"{want:.3f}" in text
    out.print(points_table([{**r, "text_si": None} for r in state.rows()], "samm"))
    assert "TextSi" not in out.export_text()  # no column when no point has it (records of older versions)

    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("unit")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("microau.kind") == "parent"]
    assert len(parents) == 2 and all(r.data.metrics["text_si"] == pytest.approx(want) for r in parents)
    child = {r.data.tags["subject"]: r for r in runs if r.data.tags.get("microau.kind") == "fold"}["007"]
    assert child.data.metrics["text_si"] == pytest.approx(0.5)


def test_runs_and_fold_records_carry_the_code_version(spec):
    """Every fold record and MLflow run names the package version and the git commit it came from."""
    from mlflow import MlflowClient

    from orchestrator.tracking.version import code_version

    v = code_version()
    if v["git_commit"] is None:  # an unpacked source tree, or no git: the package version alone
        print("no git checkout here: the git fields are checked by the test after this one")
        assert v == {"package": "0.1.0", "git_commit": None, "git_dirty": None}
    else:
        assert v["package"] == "0.1.0" and len(v["git_commit"]) == 40 and v["git_dirty"] in ("true", "false")
    store = ResultsStore(spec.paths.results)
    folds, state = _state(spec, store)
    state.begin(folds)
    state.finished(folds[0].key, fake_result(folds[0].subject), {})
    state.close()
    assert store.get(folds[0].key)["meta"]["code"] == v
    client = MlflowClient(spec.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert runs and all(r.data.tags.get("mlflow.source.git.commit") == v["git_commit"] and
                        r.data.tags.get("microau.git_dirty") == v["git_dirty"] and
                        r.data.tags["microau.version"] == "0.1.0" for r in runs)


def test_the_code_version_outside_a_git_checkout(monkeypatch):
    """From an unpacked source tree (no .git, or no git at all): the package version, no git fields, and
    no git tags on MLflow runs; in a checkout, a 40-hex commit."""
    from orchestrator.tracking import version

    version.code_version.cache_clear()
    monkeypatch.setattr(version, "_REPO", Path("/nonexistent-microau-tree"))
    try:
        assert version.code_version() == {"package": "0.1.0", "git_commit": None, "git_dirty": None}
        assert version.mlflow_tags() == {"microau.version": "0.1.0"}
    finally:
        version.code_version.cache_clear()
