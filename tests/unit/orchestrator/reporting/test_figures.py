"""Figures from a sweep's stored folds (orchestrator/reporting/figures.py): `report --figures` draws each figure as a
PNG without training, Fig. 5 draws the stored PTA weights at the tokens of the stored landmarks over the
re-read apex crop, and `run` logs the figures on the MLflow parents and each fold's loss terms per epoch
on its child run, once.

One small sweep (2 points x 2 test subjects, 2 epochs of the tiny backbone on the synthetic CASME II
data) is trained once for the module, in-process (support.sweeps.inprocess_training: `run_fold`, no Ray).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from orchestrator.execution.runner import run_sweep
from orchestrator.spec.resolved import load_sweep

from support.data import TEST_PREPROCESS
from support.sweeps import inprocess_training

pytestmark = [pytest.mark.slow, pytest.mark.figures]  # draws the figures at the end of runs (conftest)

EPOCHS = 2
SUBJECTS = ["sub01", "sub02"]
PER_GROUP = ("fig5-attention", "mer-confusion", "loss")
PER_DATASET = ("f1", "fig6-similarity-AU1", "fig7-tsne-AU1")
EXPECTED = [f"casme2-p{p}-seed1-{n}" for p in (0, 1) for n in PER_GROUP] + [f"casme2-seed1-{n}" for n in PER_DATASET]


def write_sweep(folder: Path, root: Path) -> Path:
    doc = {"name": "figs", "workdir": str(folder / "wd"),
           "datasets": {"casme2": {"reader": "casme2", "root": str(root), "subjects": SUBJECTS}},
           "preprocessing": TEST_PREPROCESS,
           "model": {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 1},
           "training": {"epochs": EPOCHS, "batch_size": 8, "lr_step_epoch": 1, "threads": 1, "device": "cpu"},
           "variants": {"full": {}, "local_origcl": {"model.contrastive": "local_origcl"}}, "seeds": [1],
           "resources": {"cpu": 1, "gpu": 0}, "retries": 0}
    path = folder / "figs.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def sweep(synth_casme2, prepared_casme2, mlflow_db_template, tmp_path_factory):
    """The sweep file, after one run that trained its 4 folds."""
    from preprocessing.pipeline import cache_path

    folder = tmp_path_factory.mktemp("figs")
    (folder / "wd").mkdir()
    shutil.copy(mlflow_db_template, folder / "wd" / "mlflow.db")
    # the session's prepared dataset (same data and preprocessing, so the same key): not prepared again
    prepared_casme2.save(cache_path(folder / "wd" / "cache", "casme2", prepared_casme2.key))
    path = write_sweep(folder, synth_casme2)
    mp = pytest.MonkeyPatch()
    try:
        calls = inprocess_training(mp.setattr)
        outcome = run_sweep(load_sweep(path), quiet=True, progress=False)
    finally:
        mp.undo()
    assert calls["trained"] == 4 and not outcome.failed
    return path


def state_of(path, overrides=()):
    from orchestrator.planning.plan import plan_from_store
    from orchestrator.reporting.results import results_from_store as state_from_store

    return state_from_store(plan_from_store(load_sweep(path, overrides), strict=True))


def copy_workdir(sweep, tmp_path, mlflow_db_template):
    """The sweep with a copy of its workdir (stored folds, prepared data) and an empty MLflow store."""
    wd = load_sweep(sweep).paths.workdir
    copy = tmp_path / "wd"
    copy.mkdir()
    for name in ("results", "cache", "datasets.json", "sweeps.json"):
        src = wd / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / name)
    shutil.copy(mlflow_db_template, copy / "mlflow.db")
    return load_sweep(sweep, [f"workdir={copy}"])


def no_training(monkeypatch):
    """Any training call fails the test."""
    import model.train
    import orchestrator.execution.trainable

    def boom(*a, **k):
        raise AssertionError("figures must come from the results store, not from training")

    for mod, name in ((model.train, "train_fold"), (model.train, "loso"),
                      (orchestrator.execution.trainable, "run_fold")):
        monkeypatch.setattr(mod, name, boom)


def test_report_figures_writes_each_figure_from_the_store(sweep, monkeypatch):
    from orchestrator.cli import main

    no_training(monkeypatch)
    res = CliRunner().invoke(main, ["report", str(sweep), "--figures"])
    assert res.exit_code == 0, res.output
    folder = load_sweep(sweep).paths.reports / "figs-figures"  # the default
    paths = sorted(folder.glob("*.png"))
    assert sorted(p.stem for p in paths) == sorted(EXPECTED)
    assert f"figures ({len(EXPECTED)}):" in res.output
    for p in paths:
        assert p.name in res.output
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 3_000_000, (p, len(data))
        with Image.open(p) as im:
            assert 250 <= im.width <= 2000 and 200 <= im.height <= 2000, (p, im.size)
            assert np.asarray(im.convert("L")).std() > 5  # something drawn, not a blank canvas
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temp file


def test_figure_options_are_checked(sweep):
    from orchestrator.cli import main

    run = lambda *a: CliRunner().invoke(main, ["report", str(sweep), *a])  # noqa: E731
    res = run("--figures", "--figure-points", "0,5")
    assert res.exit_code == 1 and "--figure-points 0,5: points are 0..1" in res.output, res.output
    res = run("--figures", "--figure-au", "9")
    assert res.exit_code == 1 and "--figure-au 9: the sweep's AUs are [1, 2, 4, 7, 12, 14, 15, 17]" in res.output
    res = run("--figure-au", "2")
    assert res.exit_code == 2 and "go with --figures" in res.output


def test_fig5_draws_the_stored_attention_over_the_apex_crop(sweep, prepared_casme2, monkeypatch, tmp_path, capsys):
    """Fig. 5's inputs are the fold records' PTA weights, tokens, landmarks and W_d; its tokens are Eq. 1
    of the prepared landmarks of each AU's Table I group; the apex crop is the one the flow image was cut
    from (its dlib landmarks are the stored ones)."""
    from model.lsi import landmark_to_token
    from model.regions import TABLE_I
    from orchestrator.reporting import figures

    state = state_of(sweep)
    g = next(g for g in state.groups.values() if g.trial.point == 0)
    records = {sid: (r, i) for r in state.group_results(g) for i, sid in enumerate(r.sample_ids)}
    drawn = []
    real = figures.attention_figure
    monkeypatch.setattr(figures, "attention_figure", lambda samples, *a, **k: drawn.append(samples) or real(
        samples, *a, **k))
    no_training(monkeypatch)
    fig5 = [p for p in figures.plan_figures(state) if p.name == "casme2-p0-seed1-fig5-attention"]
    assert figures.write_figures(state, tmp_path, only=fig5) == [str(tmp_path / f"{fig5[0].name}.png")]
    samples = drawn[0]
    assert samples and {s.au for s in samples} <= set(g.trial.aus)
    for s in samples:
        r, i = records[s.sample_id]
        assert r.labels[i, s.au_index] == 1 and s.hit == bool(r.preds[i, s.au_index])
        np.testing.assert_array_equal(s.weights, np.float32(r.extras["pta"][str(s.au)][i]))
        np.testing.assert_array_equal(s.w_d, np.float32(r.extras["w_d"][i]))
        assert s.group == list(TABLE_I[s.au]) and len(s.weights) == len(s.group)
        assert s.weights.sum() == pytest.approx(1, abs=1e-5)
        prepared = prepared_casme2.landmarks[prepared_casme2.sample_ids.index(s.sample_id)]
        np.testing.assert_allclose(s.landmarks, prepared, atol=0.006)  # kept to 0.01 px
        np.testing.assert_array_equal(s.tokens, landmark_to_token(prepared[s.group], s.grid, s.image))
        assert s.crop is not None and s.crop.shape == (*s.image, 3) and s.crop.dtype == np.uint8
    # per AU, positives by P(active), highest first
    for au in {s.au for s in samples}:
        probs = [s.prob for s in samples if s.au == au]
        assert probs == sorted(probs, reverse=True) and len(probs) <= figures.PER_AU
    # without the data (its root moved away: report uses what the run recorded), the same figure draws the
    # stored landmarks alone, with a note
    capsys.readouterr()
    state = state_of(sweep, [f"datasets.casme2.root={tmp_path / 'gone'}"])
    g = next(g for g in state.groups.values() if g.trial.point == 0)
    again = figures.attention_samples(state, g, figures.CropCache(state))
    assert [s.sample_id for s in again] == [s.sample_id for s in samples] and all(s.crop is None for s in again)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note: figures:")]
    assert len(notes) == 1 and "draws the stored landmarks without the face" in notes[0], err
    assert figures.attention_figure(again, g.trial.aus, "x") is not None


def test_incomplete_point_is_left_out_with_a_note(sweep, tmp_path):
    from orchestrator.cli import main

    args = ["report", str(sweep), "--set", "datasets.casme2.subjects=[sub01, sub02, sub03]", "--figures",
            "--out", str(tmp_path)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "note: figures: casme2 point 0 (full) seed 1 has 2/3 folds; left out" in res.stderr
    assert "figures: none (no complete point)" in res.output and not list(tmp_path.glob("*.png"))
    res = CliRunner().invoke(main, args + ["--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["figures"] == []


def mlflow_runs(spec):
    from mlflow import MlflowClient

    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return client, [r for r in runs if r.data.tags.get("microau.kind") == "parent"], \
        [r for r in runs if r.data.tags.get("microau.kind") == "fold"]


def test_mlflow_parents_carry_the_figures_and_children_the_loss_curves(sweep):
    from orchestrator.planning.store import ResultsStore

    spec = load_sweep(sweep)
    client, parents, children = mlflow_runs(spec)
    assert len(parents) == 2 and len(children) == 4
    for p in parents:
        point = 0 if p.data.tags["point"] == "full" else 1
        files = sorted(Path(a.path).stem for a in client.list_artifacts(p.info.run_id, "figures"))
        assert files == sorted([f"casme2-p{point}-seed1-{n}" for n in PER_GROUP] +
                               [f"casme2-seed1-{n}" for n in PER_DATASET])
        local = Path(client.download_artifacts(p.info.run_id, f"figures/casme2-p{point}-seed1-loss.png"))
        assert local.read_bytes()[:4] == b"\x89PNG"
    store = ResultsStore(spec.paths.results)
    for c in children:
        curve = store.result(c.data.tags["microau.fold"]).loss_curve
        assert set(curve) == {"total", "multitask", "contrastive", "gd"}
        for term, values in curve.items():
            hist = sorted(client.get_metric_history(c.info.run_id, f"loss_{term}"), key=lambda m: m.step)
            assert [m.step for m in hist] == list(range(1, EPOCHS + 1))
            assert [m.value for m in hist] == pytest.approx(values)


def test_a_rerun_draws_and_logs_nothing_new(sweep, monkeypatch):
    from orchestrator.reporting import figures

    spec = load_sweep(sweep)
    client, parents, children = mlflow_runs(spec)
    before = {p.info.run_id: p.data.tags["microau.figures"] for p in parents}
    drawn = []
    monkeypatch.setattr(figures, "write_figures", lambda *a, **k: drawn.append(1) or [])
    calls = inprocess_training(monkeypatch.setattr)
    assert run_sweep(spec, quiet=True, progress=False).trained == 0
    assert calls["trained"] == 0 and not drawn
    client, parents, children = mlflow_runs(spec)
    assert {p.info.run_id: p.data.tags["microau.figures"] for p in parents} == before
    for c in children:
        assert len(client.get_metric_history(c.info.run_id, "loss_total")) == EPOCHS  # not logged twice


def test_children_of_an_older_version_get_their_loss_curves_once(sweep, tmp_path, mlflow_db_template, monkeypatch):
    """A child run logged without per-epoch losses (before they were logged) gets them on the next run,
    once."""
    from orchestrator.execution import state as state_mod
    from orchestrator.tracking import client as tracking

    spec = copy_workdir(sweep, tmp_path, mlflow_db_template)
    monkeypatch.setattr(state_mod.SweepState, "log_figures", lambda self: None)  # figures: tested above
    monkeypatch.setattr(tracking.Tracker, "log_steps", lambda self, run_id, curve: None)  # the older version
    inprocess_training(monkeypatch.setattr)
    assert run_sweep(spec, quiet=True, progress=False).trained == 0
    client, _, children = mlflow_runs(spec)
    for c in children:
        client.delete_tag(c.info.run_id, tracking.TAG_STEPS)
        assert client.get_metric_history(c.info.run_id, "loss_total") == []
    monkeypatch.undo()
    monkeypatch.setattr(state_mod.SweepState, "log_figures", lambda self: None)
    inprocess_training(monkeypatch.setattr)
    for _ in range(2):
        assert run_sweep(spec, quiet=True, progress=False).trained == 0
        client, _, children = mlflow_runs(spec)
        assert len(children) == 4
        for c in children:
            assert [m.step for m in client.get_metric_history(c.info.run_id, "loss_gd")] == list(range(1, EPOCHS + 1))
            assert client.get_run(c.info.run_id).data.tags[tracking.TAG_STEPS] == "1"


def test_mlflow_failing_while_logging_figures_fails_nothing(sweep, tmp_path, mlflow_db_template, monkeypatch,
                                                            capsys):
    """MLflow going down when the figures are logged is the usual one warning line; the run ends as it
    would have. A figure that cannot be drawn is one warning line too."""
    from orchestrator.reporting import figures
    from orchestrator.tracking import client as tracking

    spec = copy_workdir(sweep, tmp_path, mlflow_db_template)

    def cheap(state, out_dir, only=(), **k):  # a stand-in PNG per figure: drawing is tested above
        out = []
        for p in only:
            Path(out_dir, f"{p.name}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
            out.append(str(Path(out_dir, f"{p.name}.png")))
        return out

    def down(self, *a, **k):
        raise ConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr(figures, "write_figures", cheap)
    monkeypatch.setattr(tracking.Tracker, "log_figures", down)
    inprocess_training(monkeypatch.setattr)
    outcome = run_sweep(spec, quiet=True, progress=False)
    assert outcome.trained == 0 and all(r["complete"] for r in outcome.state.rows())
    err = capsys.readouterr().err
    assert "unavailable: Connection refused. Training goes on" in err and err.count("warning: MLflow") == 1

    def broken(*a, **k):
        raise ValueError("no such colormap")

    monkeypatch.setattr(figures, "write_figures", broken)
    monkeypatch.undo()  # MLflow is back ...
    monkeypatch.setattr(figures, "write_figures", broken)  # ... but drawing fails
    inprocess_training(monkeypatch.setattr)
    outcome = run_sweep(spec, quiet=True, progress=False)
    assert outcome.trained == 0 and all(r["complete"] for r in outcome.state.rows())
    err = capsys.readouterr().err
    assert "warning: figures not drawn for MLflow: no such colormap" in err


def test_run_no_figures_draws_none_and_report_draws_them_later(synth_casme2, prepared_casme2, mlflow_db_template,
                                                               tmp_path, monkeypatch):
    """`run --no-figures` skips the figures at the end of the run (issue 18: the run's fixed cost); the
    parents then carry none, and `report --figures` still draws every one from the store."""
    from orchestrator.cli import main
    from orchestrator.reporting import figures
    from preprocessing.pipeline import cache_path

    (tmp_path / "wd").mkdir()
    shutil.copy(mlflow_db_template, tmp_path / "wd" / "mlflow.db")
    prepared_casme2.save(cache_path(tmp_path / "wd" / "cache", "casme2", prepared_casme2.key))
    path = write_sweep(tmp_path, synth_casme2)
    drawn = []
    real = figures.plan_figures
    monkeypatch.setattr(figures, "plan_figures", lambda *a, **k: drawn.append(1) or real(*a, **k))
    calls = inprocess_training(monkeypatch.setattr)
    res = CliRunner().invoke(main, ["run", str(path), "--no-figures", "--json"])
    assert res.exit_code == 0, res.output
    assert calls["trained"] == 4 and not drawn and "figures_s" not in json.loads(res.stdout)["timings"]["phases"]
    _, parents, _ = mlflow_runs(load_sweep(path))
    assert len(parents) == 2 and not any("microau.figures" in p.data.tags for p in parents)
    out = tmp_path / "figs"
    res = CliRunner().invoke(main, ["report", str(path), "--figures", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert any(out.glob("*-loss.png"))


def test_mlflow_runs_show_their_dataset_and_source(sweep):
    """Issue 18: the UI's Dataset and Source columns. Every parent and child run of the module's run has its
    prepared dataset as an MLflow dataset input (name, prepared-data key as digest, the dataset folder as
    source, samples and subjects, context `loso`) and MLflow's source tags (the sweep file, LOCAL)."""
    from orchestrator.planning.data import data_id, prepared_or_recorded

    spec = load_sweep(sweep)
    info = prepared_or_recorded(spec, spec.trials)[data_id(spec.trials[0])]
    client, parents, children = mlflow_runs(spec)
    assert len(parents) == 2 and len(children) == 4
    for run in parents + children:
        full = client.get_run(run.info.run_id)
        assert full.data.tags["mlflow.source.name"] == str(Path(sweep).resolve())
        assert full.data.tags["mlflow.source.type"] == "LOCAL"
        (inp,) = full.inputs.dataset_inputs
        d = inp.dataset
        assert (d.name, d.digest, d.source_type) == ("casme2", info.key, "local")
        assert json.loads(d.source) == {"uri": str(spec.datasets["casme2"].root)}
        assert json.loads(d.profile) == {"num_rows": info.samples, "subjects": len(info.subjects)}
        assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "loso"}
