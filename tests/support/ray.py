"""A two-node Ray cluster for the integration tests, and the small sweep files they run on it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from support import short_temp_dir
from support.data import TEST_PREPROCESS

MODEL = {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 1}
TRAIN = {"epochs": 3, "batch_size": 8, "lr_step_epoch": 2, "threads": 1, "device": "cpu"}


class SharedCluster:
    """`ray.cluster_utils.Cluster`: a head and one node, 1 CPU each, started once for every test module of
    the xdist group "ray" that uses it (starting one takes 10-20 s on a busy machine; joining it takes
    well under a second) and stopped after the last of them (the hook below). Its processes live in
    `temp`, which RAY_TMPDIR names while a module uses it."""

    def __init__(self):
        self.cluster = None
        self.temp: Path | None = None
        self.last: list | None = None  # [the session's last test that uses it], once known

    def up(self):
        from ray.cluster_utils import Cluster

        if self.cluster is None:
            self.temp = short_temp_dir()  # Ray's Unix socket paths must stay under 108 chars
            (self.temp / "ray").mkdir()
            with pytest.MonkeyPatch.context() as mp:  # what the nodes' processes inherit
                mp.setenv("RAY_TMPDIR", str(self.temp))
                mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
                self.cluster = Cluster(initialize_head=True, connect=False,
                                       head_node_args={"num_cpus": 1, "temp_dir": str(self.temp / "ray"),
                                                       "include_dashboard": False,
                                                       "object_store_memory": 100 * 2**20})
                self.cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
                self.cluster.wait_for_nodes()
        return self.cluster

    def down(self) -> None:
        import ray

        if self.cluster is not None:
            ray.shutdown()
            self.cluster.shutdown()
            shutil.rmtree(self.temp, ignore_errors=True)
            self.cluster = self.temp = None


SHARED = SharedCluster()


@pytest.fixture(scope="module")
def cluster_to_join():
    """The shared two-node cluster (SharedCluster), this process not connected to it: a `run --address`
    joins it and leaves it at its end, as on a real cluster. RAY_TMPDIR and RAY_USAGE_STATS_ENABLED=0 are
    set for the module (for the subprocesses it starts) and restored at its end, so nothing of it reaches the
    next module but the running nodes. A test that changes the nodes (adds one) puts them back as they were
    before it ends."""
    c = SHARED.up()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(SHARED.temp))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        yield c


@pytest.fixture(scope="module")
def cluster(cluster_to_join):
    """`cluster_to_join`, this process connected to it for the module (as `Cluster(connect=True)` connects):
    a `run_sweep(address=...)` uses that connection and leaves it open."""
    import ray

    if not ray.is_initialized():
        ray.init(address=cluster_to_join.address)
    yield cluster_to_join
    ray.shutdown()


def uses_cluster(item) -> bool:
    return "cluster_to_join" in getattr(item, "fixturenames", ())  # `cluster` too: it asks for it


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """The shared cluster is stopped after the session's last test that uses it (all of them are in the
    xdist group "ray": one worker runs them, one after another), so the tests after it run without its
    nodes beside them; with -n 0 it stays up over the other tests between its modules."""
    result = yield
    if SHARED.cluster is not None:
        if SHARED.last is None:
            SHARED.last = [i for i in item.session.items if uses_cluster(i)][-1:] or [item]
        if item is SHARED.last[0]:
            SHARED.down()
    return result


def pytest_sessionfinish(session):
    SHARED.down()


def write_sweep(folder: Path, root: Path, name: str, mlflow_db: Path | None = None, cache: Path | None = None,
                **over) -> Path:
    """A small sweep file over the dataset at `root` (two variants, the tiny backbone, 3 epochs), its
    workdir in `folder`; `mlflow_db`: an empty migrated MLflow store to start from (a run would copy the
    tool's template itself; migrating a new one costs ~8 s); `cache`: a cache folder whose prepared datasets
    the workdir starts with (conftest's `casme2_cache`), so preparing is a cache hit."""
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
