"""A new local MLflow store (a SQLite file) starts as a copy of an empty store with every migration applied.

MLflow creates a SQLite store by running each of its schema migrations (Alembic) on the new file, on the
path of every sweep whose workdir is new: on an idle 2-core machine, opening a new store and creating an
experiment took 2.3 s against 0.7 s for an existing one; 7.5 s on a loaded one (bench/README.md). The
result is the same empty schema every time for one MLflow version, so it is made once per machine and MLflow
version in the tool's cache folder (`tool_cache()`) and copied. MLflow checks the copy's schema revision
when it opens it, as it checks any store; a copy that cannot be made falls back to MLflow's own creation.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def tool_cache() -> Path:
    """The tool's per-user cache folder: $MICROAU_SWEEP_CACHE, else $XDG_CACHE_HOME/microau-sweep, else
    ~/.cache/microau-sweep."""
    if os.environ.get("MICROAU_SWEEP_CACHE"):
        return Path(os.environ["MICROAU_SWEEP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "microau-sweep"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:` tracking URI as SQLAlchemy reads it; None for an in-memory one."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(uri)
    db = url.database or ""
    if db in ("", ":memory:") or db.startswith("file::memory:"):
        return None
    return Path(db.removeprefix("file:").split("?")[0]).expanduser()


def start_from_template(path: Path, artifacts: Path) -> bool:
    """When there is no store at `path` yet, put a copy of the migrated empty store there (made first if
    this machine has none for this MLflow version) whose Default experiment keeps its artifacts under
    `artifacts`. Never replaces a file that exists. True when the copy was put there; False when there was
    a store already or the template could not be made or copied (MLflow then creates the store itself)."""
    if path.exists():
        return False
    try:
        template = _template()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            shutil.copyfile(template, tmp)
            _own_default_experiment(Path(tmp), artifacts)
            os.link(tmp, path)  # fails when a store appeared meanwhile: never replaced
        finally:
            os.unlink(tmp)
        return True
    except Exception as e:  # noqa: BLE001 - any failure here only means MLflow creates the store itself
        logger.debug("no template MLflow store for %s (%s); MLflow creates it", path, e)
        return False


def _template() -> Path:
    """The migrated empty store of this MLflow version in the tool's cache, made (atomically) when missing."""
    import mlflow

    folder = tool_cache() / "mlflow-stores"
    template = folder / f"empty-mlflow-{mlflow.__version__}.db"
    if template.is_file():
        if _schema_revision(template):
            return template
        template.unlink(missing_ok=True)  # damaged (it was written whole): made again below
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".empty-", suffix=".db", dir=folder)
    os.close(fd)
    os.unlink(tmp)  # MLflow creates and migrates it
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
        os.replace(tmp, template)  # two runs making it at once: either complete copy wins
    finally:
        Path(tmp).unlink(missing_ok=True)
    return template


def _schema_revision(db: Path) -> str | None:
    """The Alembic revision a store's schema is at, None when the file is not a readable store."""
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _own_default_experiment(db: Path, artifacts: Path) -> None:
    """MLflow's Default experiment (id 0), which every store has, as a store created here and now would
    have it: created now, its artifacts under `artifacts` (the template's point to where it was made)."""
    now = int(time.time() * 1000)
    con = sqlite3.connect(db)
    try:
        with con:
            con.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                        "WHERE experiment_id = 0", ((artifacts / "0").resolve().as_uri(), now, now))
    finally:
        con.close()
