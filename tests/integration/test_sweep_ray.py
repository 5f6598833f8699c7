"""The Ray Tune sweep end to end on a real two-node Ray cluster started on this machine.

On the `ray.cluster_utils.Cluster` (head + worker, 1 CPU each; tests/support/ray.py) the modules of the
xdist group "ray" share: trials of one sweep run on both nodes, the pooled metrics equal an in-process
single-node run, a re-run trains nothing and prints the same table, an added point trains only its folds.
The failures (a killed driver, a GPU request on a GPU-less cluster, a fold that keeps failing) are in
test_ray_failures.py.
"""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, f1_score

from orchestrator.execution.runner import run_sweep
from orchestrator.planning.store import ResultsStore
from orchestrator.spec.resolved import load_sweep

from support.ray import write_sweep

# a Ray kept up by a module fixture in the test process: these modules run one after another, in one worker
pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]



@pytest.fixture(scope="module")
def first_run(cluster, synth_casme2, tmp_path_factory, mlflow_db_template, casme2_cache):
    folder = tmp_path_factory.mktemp("sweep")
    path = write_sweep(folder, synth_casme2, "two_nodes", mlflow_db=mlflow_db_template, cache=casme2_cache)
    spec = load_sweep(path)
    t0 = time.time()
    outcome = run_sweep(spec, address=cluster.address, quiet=True, progress=False, figures=False)
    print(f"first run: {outcome.trained} folds in {time.time() - t0:.1f}s")
    return path, spec, outcome


def _records(spec):
    store = ResultsStore(spec.paths.results)
    return [store.get(k) for k in store.keys()]


def test_trials_ran_on_both_nodes(first_run):
    path, spec, outcome = first_run
    assert outcome.trained == 8 and outcome.reused == 0 and not outcome.failed
    recs = _records(spec)
    assert len(recs) == 8
    nodes = {r["meta"]["node_id"] for r in recs}
    assert len(nodes) == 2, f"all folds ran on {nodes}"
    assert all(r["meta"]["node_ip"] for r in recs)
    assert all(r["complete"] for r in outcome.state.rows())


def test_pooled_metrics_equal_a_single_node_in_process_run(first_run):
    """Same folds trained in this process (no Ray, one node): identical predictions and pooled metrics."""
    from model import compute_prefix
    from model.metrics import pooled_metrics
    from orchestrator.execution.trainable import run_fold
    from orchestrator.planning.data import prepare

    path, spec, outcome = first_run
    data = prepare(spec, "casme2", spec.trials_of("casme2")[0].preprocessing, progress=False)
    rows = {r["label"]: r for r in outcome.state.rows()}
    store = ResultsStore(spec.paths.results)
    for g in outcome.state.groups.values():
        prefix = compute_prefix(g.trial.model, data, g.trial.aus)  # computed afresh, not from the cache
        local = [run_fold(g.trial, data, f.subject, prefix=prefix) for f in g.folds]
        for f, r in zip(g.folds, local, strict=False):
            assert np.array_equal(np.array(r["probs"]), np.array(store.get(f.key)["result"]["probs"]))
        m = pooled_metrics(local)
        row = rows[g.trial.point_label]
        assert (row["f1"], row["acc"], row["ci"]) == (m["f1"], m["acc"], m["ci"])
        assert row["per_au"] == m["per_au"]


def test_pooled_metrics_equal_sklearn_on_stored_predictions(first_run):
    path, spec, outcome = first_run
    recs = _records(spec)
    for row in outcome.state.rows():
        mine = [r["result"] for r in recs if r["meta"]["point_label"] == row["label"]]
        assert len(mine) == row["folds_total"]
        y = np.concatenate([np.array(r["labels"]) for r in mine])
        p = (np.concatenate([np.array(r["probs"]) for r in mine]) > 0.5).astype(int)
        per_f1 = [f1_score(y[:, j], p[:, j], zero_division=0) for j in range(y.shape[1])]
        per_acc = [accuracy_score(y[:, j], p[:, j]) for j in range(y.shape[1])]
        assert row["f1"] == pytest.approx(np.mean(per_f1), abs=1e-12)
        assert row["acc"] == pytest.approx(np.mean(per_acc), abs=1e-12)
        assert [v["f1"] for v in row["per_au"].values()] == pytest.approx(per_f1)


def test_rerun_trains_nothing_and_prints_the_same_table(first_run, cluster):
    from orchestrator.cli import main

    path, spec, outcome = first_run
    again = run_sweep(load_sweep(path), address=cluster.address, quiet=True, progress=False)
    assert again.trained == 0 and again.reused == 8
    assert again.state.rows() == outcome.state.rows()
    res = CliRunner().invoke(main, ["run", str(path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["trained_folds"] == 0 and doc["reused_folds"] == 8
    assert json.loads(json.dumps(outcome.state.to_json(8, 0)["points"], default=str)) == doc["points"]
    rep = CliRunner().invoke(main, ["report", str(path), "--json"])
    assert json.loads(rep.stdout)["points"] == doc["points"]
    text = CliRunner().invoke(main, ["run", str(path)])
    assert "trained 0 fold(s), reused 8" in text.stdout
    assert text.stdout.split("trained 0")[0] == CliRunner().invoke(main, ["run", str(path)]).stdout.split(
        "trained 0")[0]


def test_report_works_where_the_dataset_is_not_at_hand(first_run, monkeypatch):
    """`report` on a machine without the data (root variable unset): the last run's record of each
    prepared dataset finds the folds in the store, and the table is the same."""
    from orchestrator.cli import main

    path, spec, outcome = first_run
    monkeypatch.delenv("MICROAU_NOT_HERE", raising=False)
    doc = yaml.safe_load(path.read_text())
    doc["datasets"]["casme2"]["root"] = "${MICROAU_NOT_HERE}"
    elsewhere = path.with_name("elsewhere.yaml")
    elsewhere.write_text(yaml.safe_dump(doc))
    rep = CliRunner().invoke(main, ["report", str(elsewhere), "--json"])
    assert rep.exit_code == 0, rep.output
    assert "MICROAU_NOT_HERE is not set" in rep.stderr and "recorded by the last run" in rep.stderr
    points = json.loads(rep.stdout)["points"]
    assert points == json.loads(json.dumps(outcome.state.to_json(8, 0)["points"], default=str))


def test_mlflow_holds_parents_with_pooled_metrics_and_children_with_predictions(first_run):
    from mlflow import MlflowClient

    path, spec, outcome = first_run
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("microau.kind") == "parent"]
    children = [r for r in runs if r.data.tags.get("microau.kind") == "fold"]
    assert len(parents) == 2 and len(children) == 8  # after the re-runs too: nothing duplicated
    rows = {r["label"]: r for r in outcome.state.rows()}
    for p in parents:
        assert p.data.metrics["f1"] == pytest.approx(rows[p.data.tags["point"]]["f1"])
        assert p.data.metrics["folds_done"] == 4 and "f1_AU12" in p.data.metrics
        assert p.data.params["model.arch"] == "microau-tiny"
    ids = {p.info.run_id for p in parents}
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] in ids and c.data.tags["node_id"]
        assert "predictions.csv" in [a.path for a in client.list_artifacts(c.info.run_id)]


def test_fold_command_runs_exactly_the_sweep_trial(first_run):
    """`fold --json` (in-process, no Ray) gives the stored predictions of the same fold bit for bit."""
    from orchestrator.cli import main

    path, spec, outcome = first_run
    res = CliRunner().invoke(main, ["fold", str(path), "--subject", "sub02", "--point", "1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    g = [g for g in outcome.state.groups.values() if g.trial.point == 1][0]
    key = [f.key for f in g.folds if f.subject == "sub02"][0]
    stored = ResultsStore(spec.paths.results).get(key)["result"]
    assert [p["id"] for p in doc["predictions"]] == stored["sample_ids"]
    got = [[p["probs"][f"AU{a}"] for a in stored["aus"]] for p in doc["predictions"]]
    assert np.array_equal(np.array(got, dtype=np.float32), np.array(stored["probs"], dtype=np.float32))


def test_ray_tools_show_one_row_per_trained_fold(first_run):
    """Ray's own tools read the sweep: one row per fold trained, its fold F1 and what fold it is."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    from model.metrics import pooled_metrics
    from model.result import FoldResult

    path, spec, outcome = first_run
    exp = spec.paths.ray_results
    assert sorted(p.name for p in exp.iterdir() if p.is_dir()) == ["two_nodes"]
    df = ResultGrid(ExperimentAnalysis(str(exp / "two_nodes"))).get_dataframe()
    assert len(df) == outcome.trained == 8
    store = ResultsStore(spec.paths.results)
    for _, row in df.iterrows():
        assert row["config/fold/dataset"] == "casme2" and row["config/fold/label"] in ("full", "no_gsd")
        r = FoldResult.from_dict(store.get(row["config/fold/key"])["result"])
        assert r.test_subject == row["config/fold/subject"]
        assert row["fold_f1"] == pytest.approx(pooled_metrics([r], n_boot=1)["f1"])


def test_adding_a_point_trains_only_its_folds(first_run, cluster, tmp_path):
    path, spec, outcome = first_run
    doc = yaml.safe_load(path.read_text())
    doc["variants"]["no_cl"] = {"model.contrastive": "none"}
    doc["max_concurrent"] = 1  # one worker process trains the 4 folds (one import of torch, not one per node)
    path2 = path.with_name("two_nodes_more.yaml")
    path2.write_text(yaml.safe_dump(doc, sort_keys=False))
    # another file with the same name: meant here (share_name), refused by default (test_reliability)
    more = run_sweep(load_sweep(path2), address=cluster.address, quiet=True, progress=False, share_name=True,
                     figures=False)
    assert more.trained == 4 and more.reused == 8
    assert [r["label"] for r in more.state.rows()] == ["full", "no_gsd", "no_cl"]
    exp = spec.paths.ray_results  # the same Tune experiment folder, not one per run
    assert sorted(p.name for p in exp.iterdir() if p.is_dir()) == ["two_nodes"]


def test_stacked_folds_store_what_unstacked_folds_store(first_run, cluster, tmp_path, mlflow_db_template,
                                                        casme2_cache):
    """`resources.folds_per_trial: 4`: each point's 4 folds train in one Ray trial as one stacked model
    (model.train_folds), and the store holds the same fold records as the unstacked first run (same keys,
    every probability within 1e-5), each fold tracked as a child of its own."""
    from mlflow import MlflowClient

    path, spec, outcome = first_run
    doc = yaml.safe_load(path.read_text())
    doc["workdir"] = str(tmp_path / "wd")
    doc["resources"] = {**doc["resources"], "folds_per_trial": 4}
    doc["max_concurrent"] = 1  # one worker process trains both trials (one import of torch, not one per node)
    (tmp_path / "wd").mkdir()
    shutil.copy(mlflow_db_template, tmp_path / "wd" / "mlflow.db")
    shutil.copytree(casme2_cache, tmp_path / "wd" / "cache", dirs_exist_ok=True)
    path2 = tmp_path / "stacked.yaml"
    path2.write_text(yaml.safe_dump(doc, sort_keys=False))
    stacked = load_sweep(path2)
    assert stacked.trials[0].hash == spec.trials[0].hash  # how folds are packed is not part of the config
    out = run_sweep(stacked, address=cluster.address, quiet=True, progress=False, figures=False)
    assert out.trained == 8 and not out.failed
    trials = [t for t in out.timings["trials"] if t.get("stacked_folds")]
    assert len(trials) == 8 and {t["stacked_folds"] for t in trials} == {4}
    before, after = ResultsStore(spec.paths.results), ResultsStore(stacked.paths.results)
    assert len(list(after.keys())) == 8 and set(after.keys()) <= set(before.keys())  # before: + an added point
    for k in after.keys():
        a, b = before.result(k), after.result(k)
        assert a.sample_ids == b.sample_ids
        assert np.abs(a.probs - b.probs).max() <= 1e-5, k
    client = MlflowClient(stacked.tracking_uri)
    exp = client.get_experiment_by_name(stacked.experiment)
    assert len(client.search_runs([exp.experiment_id], "tags.`microau.kind` = 'fold'")) == 8
