"""Shared fixtures: a small synthetic CASME II-layout dataset and its prepared form (session-scoped, so
every test module reuses one copy)."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

# isort: split
import model._torchvision_guard  # noqa: F401 - before any test module imports open_clip itself

# isort: split
import pytest

from orchestrator.cli import logs

from support.data import TEST_PREPROCESS

pytest_plugins = ["support.ray"]  # the two-node Ray `cluster` fixture of the integration tests

logs.install()  # library warnings print as the CLI prints them, so tests read them where users do


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration/ is an integration test (`-m "not integration"` leaves them out)."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def synth_casme2(tmp_path_factory):
    """Root of a generated CASME II-layout dataset: 4 subjects x 6 samples, seed 0."""
    from preprocessing.synth import generate
    return generate(tmp_path_factory.mktemp("data") / "casme2", layout="casme2", subjects=4, per_subject=6,
                    seed=0)


@pytest.fixture(scope="session")
def synth_samm(tmp_path_factory):
    """Root of a generated SAMM-layout dataset: 3 subjects x 4 samples, seed 0."""
    from preprocessing.synth import generate
    return generate(tmp_path_factory.mktemp("data") / "samm", layout="samm", subjects=3, per_subject=4,
                    seed=0)


@pytest.fixture(scope="session")
def tiny_casme2(tmp_path_factory):
    """Root of a generated CASME II-layout dataset of 2 subjects x 2 samples (for tests that break it:
    copy it first)."""
    from preprocessing.synth import generate
    return generate(tmp_path_factory.mktemp("data") / "tiny", layout="casme2", subjects=2, per_subject=2,
                    seed=3)


@pytest.fixture(scope="session")
def casme2_cache(synth_casme2, tmp_path_factory):
    """A cache folder holding `synth_casme2` prepared with the test preprocessing: copied into a sweep's
    `<workdir>/cache`, it makes preparing that dataset a cache hit (the key hashes the content)."""
    from preprocessing import prepare_dataset
    from preprocessing.config import PreprocessConfig

    cache = tmp_path_factory.mktemp("cache")
    prepare_dataset("casme2", synth_casme2, PreprocessConfig.model_validate(TEST_PREPROCESS), cache, progress=False)
    return cache


@pytest.fixture(scope="session")
def prepared_casme2(synth_casme2, casme2_cache):
    """`PreparedDataset` of `synth_casme2` (24 samples, flow (24, 3, 224, 224))."""
    from preprocessing import prepare_dataset
    from preprocessing.config import PreprocessConfig
    return prepare_dataset("casme2", synth_casme2, PreprocessConfig.model_validate(TEST_PREPROCESS),
                           casme2_cache, progress=False)


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory):
    """An empty MLflow SQLite store with every migration applied (creating one takes ~10 s): tests copy it
    to `<workdir>/mlflow.db` instead of migrating a fresh database each."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db
