"""Bad inputs and damaged state reached through the command line: each ends in one message naming the
file, row, key or sample and saying what to do, a non-zero exit where nothing useful could be done, and
no Python traceback (docs/reliability.md lists every case and the test that covers it)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.spec.resolved import load_sweep

from support.data import TEST_PREPROCESS

MODEL = {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 1}


def sweep_file(folder: Path, root: Path, **over) -> Path:
    doc = {"name": "rel", "workdir": str(folder / "wd"),
           "datasets": {"casme2": {"reader": "casme2", "root": str(root)}},
           "preprocessing": TEST_PREPROCESS, "model": MODEL,
           "training": {"epochs": 1, "threads": 1, "device": "cpu"}, "resources": {"cpu": 1, "gpu": 0}}
    doc.update(over)
    path = folder / "rel.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_failure(result, *needles):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception,
                                                                                         SystemExit)
    for n in needles:
        assert n in result.output, f"{n!r} not in {result.output!r}"


@pytest.fixture
def gappy(tmp_path):
    """A CASME II-layout set of 3 subjects x 2 samples where one sample of sub01 and both samples of
    sub03 lost their apex frame: two samples of sub01/sub02 remain... and sub03 drops out of LOSO."""
    from preprocessing.annotations import read_casme2
    from preprocessing.synth import generate

    root = generate(tmp_path / "casme2", layout="casme2", subjects=3, per_subject=2, seed=5)
    samples = read_casme2(root)
    gone = [s for s in samples if s.subject == "sub03"] + [s for s in samples if s.subject == "sub01"][:1]
    for s in gone:
        s.frames[s.apex].unlink()
    return root, sorted(s.id for s in gone)


def test_skipped_samples_and_dropped_subjects_are_listed_everywhere(gappy, tmp_path):
    from mlflow import MlflowClient

    from orchestrator.execution.state import SweepState
    from orchestrator.planning.data import prepare_all
    from orchestrator.planning.plan import make_plan

    root, gone = gappy
    path = sweep_file(tmp_path, root, datasets={"casme2": {"reader": "casme2", "root": str(root),
                                                           "on_error": "skip"}})
    spec = load_sweep(path)
    datasets = prepare_all(spec, spec.trials, progress=False)
    (data,) = datasets.values()
    assert sorted(d["sample"] for d in data.skipped) == gone and sorted(set(data.subjects)) == ["sub01", "sub02"]

    # report: the printed notes, the JSON and CSV report files
    r = cli("report", path)
    assert r.exit_code == 0, r.output
    assert "skipped casme2: 3 sample(s) left out (on_error: skip)" in r.output
    for sid in gone:
        assert f"sample {sid}: frame(s)" in r.output
    assert "dropped casme2: subject(s) sub03 have no usable sample and are not in LOSO" in r.output
    doc = json.loads((spec.paths.reports / "rel.json").read_text())
    assert sorted(s["sample"] for s in doc["data_notes"][0]["skipped"]) == gone
    assert doc["data_notes"][0]["dropped_subjects"] == ["sub03"]
    assert sorted(doc["points"][0]["skipped_samples"]) == gone
    csv = (spec.paths.reports / "rel.csv").read_text()
    assert "skipped_samples" in csv.splitlines()[0] and "sub03" in csv.splitlines()[1]
    rj = cli("report", path, "--json")
    assert json.loads(rj.stdout)["data_notes"][0]["dropped_subjects"] == ["sub03"]

    # MLflow: the parent run of each point carries them
    SweepState(make_plan(spec, datasets), tracking=True)
    client = MlflowClient(spec.tracking_uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("rel").experiment_id])
    assert sorted(parent.data.tags["skipped_samples"].split(";")) == gone
    assert parent.data.tags["dropped_subjects"] == "sub03" and parent.data.metrics["n_skipped"] == 3
    # logged once: a later run finds them on the parent and does not write them again
    from unittest import mock

    with mock.patch("mlflow.MlflowClient.log_dict", side_effect=AssertionError("notes logged again")):
        again = SweepState(make_plan(spec, datasets), tracking=True)
    assert again.tracker is not None and again.tracking_errors == []


def test_report_never_preprocesses(tiny_casme2, tmp_path):
    path = sweep_file(tmp_path, tiny_casme2)
    r = cli("report", path)
    assert_clean_failure(r, "not prepared here yet", "run `microau-sweep run")
    cache = tmp_path / "wd" / "cache"
    assert not cache.exists() or not list(cache.glob("prepared-*"))


def test_report_does_not_generate_synthetic_data(tmp_path):
    root = tmp_path / "gen"
    path = sweep_file(tmp_path, root, datasets={"casme2": {"reader": "casme2", "root": str(root),
                                                           "synthetic": {"subjects": 2, "per_subject": 2}}})
    assert_clean_failure(cli("report", path), "does not exist", "run `microau-sweep run")
    assert not root.exists()


def test_damaged_dataset_manifest_is_set_aside_and_rewritten(tiny_casme2, tmp_path, capsys):
    from orchestrator.planning.data import prepare_all, record_prepared

    spec = load_sweep(sweep_file(tmp_path, tiny_casme2))
    manifest = spec.paths.manifest
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{this is not json")
    record_prepared(spec, prepare_all(spec, spec.trials, progress=False))
    assert "datasets.json is damaged" in capsys.readouterr().err
    assert manifest.with_name(manifest.name + ".damaged").read_text() == "{this is not json"
    assert list(json.loads(manifest.read_text()).values())[0]["subjects"] == ["sub01", "sub02"]


def test_report_with_a_damaged_manifest_and_no_data_says_what_to_do(tiny_casme2, tmp_path):
    root = shutil.copytree(tiny_casme2, tmp_path / "data")
    path = sweep_file(tmp_path, root)
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "datasets.json").write_text("[]")
    shutil.rmtree(root)
    r = cli("report", path)
    assert_clean_failure(r, "datasets.json is damaged", "moved to", "run `microau-sweep run")


def test_run_with_an_unwritable_results_folder_stops_before_any_work(tiny_casme2, tmp_path):
    path = sweep_file(tmp_path, tiny_casme2)
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "results").write_text("a file where the results folder should be")
    r = cli("run", path)
    assert_clean_failure(r, "results: a file stands where the results folder should be", "Nothing was trained")
    assert not (tmp_path / "wd" / "cache").exists()  # not even preprocessed


def test_run_and_report_with_a_workdir_that_is_a_file(tiny_casme2, tmp_path):
    path = sweep_file(tmp_path, tiny_casme2)
    (tmp_path / "wd").write_text("oops")
    for cmd in ("run", "report"):
        assert_clean_failure(cli(cmd, path), "wd is a file, not a folder")


def test_damaged_prepared_dataset_cache_is_prepared_again(tiny_casme2, tmp_path, capsys):
    from preprocessing import find_prepared, prepare_dataset
    from preprocessing.config import PreprocessConfig

    cfg = PreprocessConfig.model_validate(TEST_PREPROCESS)
    first = prepare_dataset("casme2", tiny_casme2, cfg, tmp_path / "cache", progress=False)
    (path,) = (tmp_path / "cache").glob("prepared-*.npz")
    path.write_bytes(path.read_bytes()[:1000])  # cut short
    assert find_prepared("casme2", tiny_casme2, cfg, tmp_path / "cache") is None  # report: not prepared
    assert "cannot read the prepared dataset" in capsys.readouterr().err and not path.exists()
    path.write_bytes(b"garbage")
    again = prepare_dataset("casme2", tiny_casme2, cfg, tmp_path / "cache", progress=False)
    assert "deleting it, the dataset is prepared again" in capsys.readouterr().err
    assert again.key == first.key and (again.flow == first.flow).all() and path.is_file()


@pytest.mark.parametrize("cmd", ["run", "report", "fold"])
def test_bad_set_override_on_the_command_line(tiny_casme2, tmp_path, cmd):
    path = sweep_file(tmp_path, tiny_casme2)
    extra = ["--subject", "sub01"] if cmd == "fold" else []
    r = cli(cmd, path, "--set", "training.epochz=1", *extra)
    assert_clean_failure(r, "--set training.epochz=1: unknown key 'training.epochz'")


def test_run_in_a_log_prints_one_line_per_fold_and_heartbeats(tmp_path, monkeypatch):
    """Under nohup, a batch job or `| tee` (stdout not a terminal) `run` prints a plain line per finished
    or failed fold, and a heartbeat while folds run."""
    import time

    import orchestrator.reporting.view as view

    from support.sweeps import fake_training

    fake_training(monkeypatch.setattr)
    import orchestrator.cli.sweep as cli_sweep

    real = view.log_view
    monkeypatch.setattr(cli_sweep, "log_view", lambda out, heartbeat_s=60.0: real(out, heartbeat_s=0.2))
    import orchestrator.execution.state as state

    finished = state.SweepState.finished

    def slow(self, *a, **k):  # a fold takes a moment: the heartbeat has something to say
        time.sleep(0.5)
        return finished(self, *a, **k)

    monkeypatch.setattr(state.SweepState, "finished", slow)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "logs", "workdir": str(tmp_path / "wd"),
                                    "datasets": {"samm": {"reader": "samm", "root": "/nowhere"}},
                                    "variants": {"a": {}, "b": {"model.gsd": False}}}))
    r = cli("run", path)
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stdout.splitlines() if " fold " in f" {line}" and "done" in line]
    assert len(lines) == 6, r.stdout
    assert "fold 1/6 done  samm a seed 1 subject 006  fold F1 " in lines[0] and "point F1 so far" in lines[0]
    assert "(1/3 folds)  ETA " in lines[0] and "fold 6/6 done  samm b seed 1 subject 008" in lines[-1]
    assert "finished this run; elapsed" in r.stdout  # heartbeat


def test_a_copied_dataset_and_workdir_reuse_every_fold(tiny_casme2, tmp_path, monkeypatch):
    """`cp -r` of the dataset and of the workdir (new paths, new modification times): `report` finds
    every fold and `run` trains none, because the prepared-data key hashes what the files hold."""
    from support.sweeps import fake_training

    calls = fake_training(monkeypatch.setattr, real_data=True)  # real data and keys, fake training
    a = tmp_path / "a"
    a.mkdir()
    shutil.copytree(tiny_casme2, a / "data")
    first = cli("run", sweep_file(a, a / "data"))
    assert first.exit_code == 0 and calls["trained"] == 2, first.output
    b = tmp_path / "b"
    shutil.copytree(a, b, copy_function=shutil.copy)  # as `cp -r` does: new mtimes
    path_b = sweep_file(b, b / "data")
    r = cli("report", path_b)
    assert r.exit_code == 0 and " 2/2 " in r.output and "incomplete" not in r.output, r.output
    again = cli("run", path_b)
    assert again.exit_code == 0 and calls["trained"] == 2 and "reused 2" in again.output, again.output


@pytest.fixture
def ran_then_changed(tiny_casme2, tmp_path, monkeypatch):
    """A sweep over a copy of the tiny set run once (real data and keys, fake training), then one frame the
    pipeline reads replaced: the data here no longer gives the recorded prepared-data key."""
    from preprocessing.annotations import read_casme2

    from support.sweeps import fake_training

    fake_training(monkeypatch.setattr, real_data=True)
    root = shutil.copytree(tiny_casme2, tmp_path / "data")
    path = sweep_file(tmp_path, root)
    assert cli("run", path).exit_code == 0
    s = read_casme2(root)[0]
    s.frames[s.onset].write_bytes(s.frames[s.apex].read_bytes())
    return path


def test_report_says_when_folds_are_stored_under_an_earlier_data_key(ran_then_changed):
    from orchestrator.planning.data import prepare_all, record_prepared

    path = ran_then_changed
    spec = load_sweep(path)
    record_prepared(spec, prepare_all(spec, spec.trials, progress=False))  # e.g. a run that stopped before training
    r = CliRunner().invoke(main, ["report", str(path)])
    assert r.exit_code == 0 and " 0/2 incomplete" in r.output
    assert "note: 2 fold(s) of casme2 base seed 1 are stored under an earlier prepared-data key" in r.stderr
    assert "hashes their content" in r.stderr


def test_a_second_sweep_file_with_the_same_name_is_refused_naming_both(tmp_path, monkeypatch):
    from support.sweeps import fake_training

    fake_training(monkeypatch.setattr)
    doc = {"name": "same", "workdir": str(tmp_path / "wd"), "datasets": {"samm": {"reader": "samm", "root": "/x"}}}
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(yaml.safe_dump(doc))
    second.write_text(yaml.safe_dump({**doc, "training": {"epochs": 3}}))
    assert cli("run", first).exit_code == 0
    for cmd in ("run", "report"):
        r = cli(cmd, second)
        assert_clean_failure(r, f"{second}: name 'same' is already used in the workdir", str(first.resolve()),
                             "--share-name")
    assert cli("run", second, "--share-name").exit_code == 0  # on purpose
    first.write_text(yaml.safe_dump({**doc, "seeds": [1, 2]}))  # the same file, edited, is the same sweep
    assert cli("run", first, "--share-name").exit_code == 0 and cli("report", first).exit_code == 0
    copy = tmp_path / "copy.yaml"  # a copy with the same contents is the same sweep
    copy.write_text(first.read_text())
    assert cli("report", copy).exit_code == 0


def test_plan_and_report_say_when_the_data_here_changed_since_the_last_run(ran_then_changed):
    """The data at hand no longer gives the recorded key (a frame was replaced): `plan` counts every fold
    as to train (run prepares it again) and `report` says its table is the recorded data's."""
    path = ran_then_changed
    p = CliRunner().invoke(main, ["plan", str(path), "--json"])
    assert p.exit_code == 0, p.output
    doc = json.loads(p.stdout)
    assert doc["datasets"][0]["state"] == "changed" and doc["folds"]["to_train"] == 2
    assert "differ from what the last run prepared" in p.stderr
    r = CliRunner().invoke(main, ["report", str(path)])
    assert r.exit_code == 0 and " 2/2 " in r.output and "`run` prepares the data as it is now" in r.stderr
