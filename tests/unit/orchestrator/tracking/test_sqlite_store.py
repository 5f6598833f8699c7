"""A new SQLite tracking store starts as a copy of the migrated empty store of this MLflow version, made once in
the tool's cache; a store that exists is never replaced; without a usable cache MLflow creates the store."""
from __future__ import annotations

import sqlite3

import yaml

from orchestrator.spec.resolved import load_sweep
from orchestrator.tracking.client import Tracker
from orchestrator.tracking.sqlite_store import start_from_template, tool_cache


def _sweep(folder, name="unit"):
    doc = {"name": name, "workdir": str(folder / "wd"), "datasets": {"samm": {"reader": "samm", "root": "/nowhere"}}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_sweep(path)


def _default_experiment(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()[0]
    finally:
        con.close()


def test_a_new_store_is_a_copy_of_the_cached_template_and_tracks(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROAU_SWEEP_CACHE", str(tmp_path / "cache"))
    first, second = _sweep(tmp_path / "a"), _sweep(tmp_path / "b")
    tracker = Tracker(first)  # makes the template, then copies it
    templates = list((tool_cache() / "mlflow-stores").glob("empty-mlflow-*.db"))
    assert len(templates) == 1 and not list((tool_cache() / "mlflow-stores").glob(".*"))  # no temp file left
    stamp = templates[0].stat().st_mtime_ns
    run = tracker.client.create_run(tracker.experiment_id, run_name="x")
    tracker.client.log_metric(run.info.run_id, "f1", 0.5)
    assert tracker.client.get_run(run.info.run_id).data.metrics == {"f1": 0.5}

    other = Tracker(second)  # a second new workdir: the same template, copied again (not made again)
    assert templates[0].stat().st_mtime_ns == stamp
    assert other.client.search_runs([other.experiment_id]) == []  # nothing of the first store in the copy
    for sweep in (first, second):  # the Default experiment's artifacts in the store's own workdir
        assert _default_experiment(sweep.paths.workdir / "mlflow.db") == \
            (sweep.paths.mlartifacts / "0").resolve().as_uri()
    assert not [p for p in first.paths.workdir.iterdir() if p.name.startswith(".mlflow.db")]


def test_an_existing_store_is_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROAU_SWEEP_CACHE", str(tmp_path / "cache"))
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"mine")
    assert start_from_template(db, tmp_path / "art") is False
    assert db.read_bytes() == b"mine" and not (tmp_path / "cache").exists()


def test_without_a_usable_cache_mlflow_creates_the_store(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("MICROAU_SWEEP_CACHE", str(blocker / "cache"))  # cannot be created
    sweep = _sweep(tmp_path)
    assert start_from_template(sweep.paths.workdir / "mlflow.db", sweep.paths.mlartifacts) is False
    tracker = Tracker(sweep)
    assert tracker.client.get_experiment(tracker.experiment_id).name == sweep.experiment


def test_a_damaged_template_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROAU_SWEEP_CACHE", str(tmp_path / "cache"))
    assert start_from_template(tmp_path / "a.db", tmp_path / "art")
    template, = (tool_cache() / "mlflow-stores").glob("empty-mlflow-*.db")
    template.write_bytes(b"not a database")
    assert start_from_template(tmp_path / "b.db", tmp_path / "art")
    assert _default_experiment(tmp_path / "b.db") == (tmp_path / "art" / "0").resolve().as_uri()
    assert template.read_bytes()[:15] == b"SQLite format 3"
