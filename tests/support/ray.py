"""A two-node Ray cluster for the integration tests, and the small sweep files they run on it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from support import short_temp_dir
from support.data import TEST_PREPROCESS

MODEL = {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 1}
TRAIN = {"epochs": 3, "batch_size": 8, "lr_step_epoch": 2, "threads": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    temp = short_temp_dir()  # Ray's Unix socket paths must stay under 108 chars
    (temp / "ray").mkdir()
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_TMPDIR=str(temp), RAY_USAGE_STATS_ENABLED="0")  # subprocesses inherit them
    c = Cluster(initialize_head=True, connect=True,
                head_node_args={"num_cpus": 1, "temp_dir": str(temp / "ray"), "include_dashboard": False,
                                "object_store_memory": 100 * 2**20})
    c.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def write_sweep(folder: Path, root: Path, name: str, mlflow_db: Path | None = None, cache: Path | None = None,
                **over) -> Path:
    """A small sweep file over the dataset at `root` (two variants, the tiny backbone, 3 epochs), its
    workdir in `folder`; `mlflow_db`: an empty migrated MLflow store to start from (creating one costs
    ~8 s); `cache`: a cache folder whose prepared datasets the workdir starts with (conftest's
    `casme2_cache`), so preparing is a cache hit."""
    doc = {"name": name, "workdir": str(folder / "wd"),
           "datasets": {"casme2": {"reader": "casme2", "root": str(root)}},
           "preprocessing": TEST_PREPROCESS, "model": MODEL, "training": TRAIN,
           "variants": {"full": {}, "no_gsd": {"model.gsd": False}}, "seeds": [1],
           "resources": {"cpu": 1, "gpu": 0}, "retries": 0}
    doc.update(over)
    if mlflow_db is not None:
        (folder / "wd").mkdir(parents=True, exist_ok=True)
        shutil.copy(mlflow_db, folder / "wd" / "mlflow.db")
    if cache is not None:
        shutil.copytree(cache, folder / "wd" / "cache", dirs_exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
