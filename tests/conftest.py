"""Shared fixtures: a small synthetic CASME II-layout dataset and its prepared form (session-scoped, so
every test module reuses one copy)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

# isort: split
import model._torchvision_guard  # noqa: F401 - before any test module imports open_clip itself

# isort: split
import pytest

from orchestrator.cli import logs

from support.data import TEST_PREPROCESS

pytest_plugins = ["support.ray",  # the two-node Ray `cluster` fixture of the integration tests
                  "support.grouping"]  # a module's tests that share a costly module fixture: one worker

logs.install()  # library warnings print as the CLI prints them, so tests read them where users do


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration/ is an integration test (`-m "not integration"` leaves them out)."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
    # pytest-xdist's --dist loadgroup keeps each xdist_group in one worker by suffixing the node ids (its
    # own hook, which runs before this one); with a pytest it cannot do that for (9.x), the groups would be
    # silently ignored and two Ray clusters would share a worker: stop instead
    if os.environ.get("PYTEST_XDIST_WORKER") and config.getvalue("loadgroup"):
        lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(f"pytest-xdist did not group {lost[0]} (pytest {pytest.__version__}); install "
                                    f"the test extras (pytest<9): .venv/bin/pip install -e '.[test]'")


@pytest.fixture(autouse=True)
def _figures_only_where_tested(request, monkeypatch):
    """The figures a `run` draws at its end cost seconds per run that completes a point; only the tests
    marked `figures` (tests/unit/orchestrator/reporting/test_figures.py, which checks them) draw them. Module
    fixtures are set up before this one and draw as `run` does unless they pass figures=False."""
    if request.node.get_closest_marker("figures") is None:
        from orchestrator.execution.state import SweepState

        monkeypatch.setattr(SweepState, "log_figures", lambda self: None)


def once(tmp_path_factory, name: str, make) -> Path:
    """`<session tmp>/<name>`, made by `make(path)` once per test session whatever the number of xdist
    workers: the first worker to get here makes it, the others wait for it (a file lock) and use it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's basetemp is <session tmp>/popen-gwN
        root = root.parent
    path, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            make(path)
            done.touch()
    return path


@pytest.fixture(scope="session", autouse=True)
def _tool_cache(tmp_path_factory):
    """The tool's per-user cache (the migrated empty MLflow store every new workdir store starts from,
    orchestrator/tracking/sqlite_store.py) in the session's temp folder, shared by the xdist workers and the
    commands the tests start, instead of the user's ~/.cache."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    saved = os.environ.get("MICROAU_SWEEP_CACHE")
    os.environ["MICROAU_SWEEP_CACHE"] = str(root / "tool-cache")
    yield
    if saved is None:
        os.environ.pop("MICROAU_SWEEP_CACHE", None)
    else:
        os.environ["MICROAU_SWEEP_CACHE"] = saved


def _generate(layout: str, subjects: int, per_subject: int, seed: int):
    from preprocessing.synth import generate

    return lambda path: generate(path, layout=layout, subjects=subjects, per_subject=per_subject, seed=seed)


@pytest.fixture(scope="session")
def synth_casme2(tmp_path_factory):
    """Root of a generated CASME II-layout dataset: 4 subjects x 6 samples, seed 0 (read-only: shared)."""
    return once(tmp_path_factory, "synth-casme2", _generate("casme2", 4, 6, 0))


@pytest.fixture(scope="session")
def synth_samm(tmp_path_factory):
    """Root of a generated SAMM-layout dataset: 3 subjects x 4 samples, seed 0 (read-only: shared)."""
    return once(tmp_path_factory, "synth-samm", _generate("samm", 3, 4, 0))


@pytest.fixture(scope="session")
def tiny_casme2(tmp_path_factory):
    """Root of a generated CASME II-layout dataset of 2 subjects x 2 samples (for tests that break it:
    copy it first)."""
    return once(tmp_path_factory, "synth-tiny", _generate("casme2", 2, 2, 3))


@pytest.fixture(scope="session")
def casme2_cache(synth_casme2, tmp_path_factory):
    """A cache folder holding `synth_casme2` prepared with the test preprocessing: copied into a sweep's
    `<workdir>/cache`, it makes preparing that dataset a cache hit (the key hashes the content)."""
    from preprocessing import prepare_dataset
    from preprocessing.config import PreprocessConfig

    def make(cache):
        prepare_dataset("casme2", synth_casme2, PreprocessConfig.model_validate(TEST_PREPROCESS), cache,
                        progress=False)

    return once(tmp_path_factory, "casme2-cache", make)


@pytest.fixture(scope="session")
def prepared_casme2(synth_casme2, casme2_cache):
    """`PreparedDataset` of `synth_casme2` (24 samples, flow (24, 3, 224, 224))."""
    from preprocessing import prepare_dataset
    from preprocessing.config import PreprocessConfig
    return prepare_dataset("casme2", synth_casme2, PreprocessConfig.model_validate(TEST_PREPROCESS),
                           casme2_cache, progress=False)


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory, _tool_cache):
    """An empty MLflow SQLite store with every migration applied: the tool's own template
    (orchestrator/tracking/sqlite_store.py, in the session's tool cache), put in a folder of its own for the
    tests that place a store themselves (an MLflow server's, or one copied into a workdir ahead of a run)."""
    from orchestrator.tracking.sqlite_store import start_from_template

    def make(folder):
        folder.mkdir(parents=True)
        if not start_from_template(folder / "mlflow.db", folder / "mlartifacts"):
            raise RuntimeError(f"no template MLflow store could be made in {folder}")

    return once(tmp_path_factory, "mlflow-template", make) / "mlflow.db"
