"""A search over whole LOSO points (issue 19; docs/sweeps.md, "Searching") on Ray Tune's OptunaSearch and
ASHA, on the integration tests' shared two-node Ray cluster (1 CPU per node).

The synthetic task: a generated CASME II-layout dataset of 5 subjects x 8 samples, the tiny backbone frozen
(trainable_blocks 0, its prefix cached), 10 epochs of SGD, AUs 1, 2, 4, 12. Measured in-process (every
fold, pooled F1; `python bench/search_band.py`, bench/README.md): lr_head 1e-5 0.363, 3e-4 0.000, 1e-3
0.117, 2e-3 0.715, 5e-3 0.728, 1e-2 0.753, 3e-2 0.779, 5e-2 0.479 (0.462 in another run: the edge of
divergence), 1e-1 0.000, 1 0.000. The labels are learned (F1 > 0.7) only for lr_head in [2e-3, 3e-2]: the
band the search must find, sampling lr_head log-uniformly over [1e-5, 1].
"""
from __future__ import annotations

import os
import shutil
import time

import pytest
import yaml

from orchestrator.execution.runner import run_sweep
from orchestrator.execution.search import milestones, run_search
from orchestrator.planning.candidates import base_trials, load_candidates
from orchestrator.planning.data import prepare_all
from orchestrator.planning.store import ResultsStore
from orchestrator.reporting.search import best as best_row
from orchestrator.reporting.search import candidate_rows
from orchestrator.spec.resolved import load_sweep

from support.data import TEST_PREPROCESS
from support.sweeps import InProcessBackend

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.xdist_group("ray")]

BAND = (2e-3, 3e-2)
SUBJECTS = 5
CANDIDATES = 8  # seeded, one at a time: the first (5.5e-3) is in the band already; 16 of 40 folds trained


@pytest.fixture(scope="module")
def cluster_address(cluster_to_join):
    """The group's shared two-node cluster (tests/support/ray.py; 1 CPU each), which each search joins by
    its address and leaves, as `run --address` does. (A Ray of its own here cost a start and a shutdown,
    and the group's later tests, joining the cluster again after it, lost every trial: 'The actor never
    ran - it was cancelled before it started running'.)"""
    return cluster_to_join.address


def _doc(folder, name, **over):
    doc = {"name": name, "workdir": "wd",  # relative to the folder the module runs in (`searched`)
           "datasets": {"casme2": {"reader": "casme2", "root": str(folder / "data"), "aus": [1, 2, 4, 12],
                                   "synthetic": {"subjects": SUBJECTS, "per_subject": 8, "seed": 0}}},
           "preprocessing": TEST_PREPROCESS,
           "model": {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 0},
           "training": {"epochs": 10, "batch_size": 8, "lr_step_epoch": 100, "threads": 1, "device": "cpu"},
           "resources": {"cpu": 1, "gpu": 0}, "retries": 0}
    doc.update(over)
    return doc


def _write(folder, doc):
    path = folder / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# max_concurrent 1: each run of the search starts a coordinator process per concurrent candidate (a Ray
# worker: seconds of CPU), and the stop after the 6th fold then finds no other candidate's fold in flight
# (a fold task whose coordinator dies takes its worker process, and its torch import, with it)
SEARCH = {"algorithm": "optuna", "metric": "f1", "mode": "max", "num_samples": CANDIDATES, "max_concurrent": 1,
          "space": {"training.lr_head": {"loguniform": [1e-5, 1.0]}},
          "early_stop": {"grace_folds": 1, "reduction_factor": 4}}


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def searched(cluster_address, tmp_path_factory):
    """The search, stopped on the driver after the 6th fold it stores (an exception, as a killed driver
    leaves it: candidates drawn and not finished), then run again to the end."""
    folder = tmp_path_factory.mktemp("search")
    cwd = os.getcwd()
    os.chdir(folder)  # the workdir is relative, as in a sweep file (a Tune trial runs in a folder of its own)
    path = _write(folder, _doc(folder, "lr_search", search=SEARCH))
    # the data generated and prepared here, in this process: the search then finds it in its cache.
    # Preparing is not what this module checks (tests/integration/test_parallel.py is), and as Ray tasks it
    # would start two worker processes (Ray's import and dlib's model each) that the folds do not reuse
    sweep = load_sweep(path)
    prepare_all(sweep, base_trials(sweep), progress=False)
    first: list[str] = []

    def stop(key):
        first.append(key)
        if len(first) == 6:
            raise Stop("stopped after 6 folds")

    t0 = time.time()
    with pytest.raises(Exception, match="stopped after 6 folds"):
        run_search(load_sweep(path), address=cluster_address, quiet=True, progress=False, tracking=False, inject=stop)
    stopped = load_candidates(load_sweep(path))
    t1 = time.time()
    second: list[str] = []
    outcome = run_search(load_sweep(path), address=cluster_address, quiet=True, progress=False, tracking=False,
                         inject=second.append)
    print(f"search: {len(first)} folds in {t1 - t0:.1f}s until stopped, then {len(second)} in {time.time() - t1:.1f}s")
    yield folder, path, outcome, first, second, stopped
    os.chdir(cwd)


def test_the_search_finds_the_band_and_early_stopping_trains_fewer_folds(searched):
    folder, path, outcome, first, second, before = searched
    items = outcome.candidates.items
    assert len(items) == CANDIDATES and all(c.finished for c in items)
    complete = [c for c in items if c.status == "complete"]
    best = max(complete, key=lambda c: c.metric)
    assert BAND[0] <= best.params["training.lr_head"] <= BAND[1], [(c.params, c.metric) for c in complete]
    assert best.metric > 0.7
    trained, to_the_end = len(first) + len(second), CANDIDATES * SUBJECTS
    print(f"folds trained with early_stop: {trained}; the same candidates run to the end: {to_the_end}")
    # every fold trained is a candidate's, and a candidate trains no fold past the rung of its last report
    # (the candidates the stop interrupted excepted: folds stored in the middle of a report, before the
    # stop, may lie past the rung at which the rerun's fresh scheduler stops them)
    stored = {g.trial.point: g.done for g in outcome.results.groups.values()}
    assert trained == sum(stored.values())
    rungs = milestones(SUBJECTS, outcome.results.sweep.spec.search)
    assert rungs == [1, 4, 5]
    interrupted = {c.index for c in before.items if not c.finished}
    assert all(stored[c.index] <= min(r for r in rungs if r >= c.folds_done) for c in items
               if c.index not in interrupted), [(c.index, c.folds_done, stored[c.index]) for c in items]
    assert trained <= 0.6 * to_the_end
    stopped = [c for c in items if c.status == "stopped"]
    assert stopped and all(c.folds_done < SUBJECTS for c in stopped)
    # never ranked as complete: the table puts every complete candidate first, the stopped ones after
    rows = candidate_rows(outcome.results, outcome.candidates)
    assert [r["complete"] for r in rows] == sorted((r["complete"] for r in rows), reverse=True)
    assert best_row(rows)["index"] == best.index
    assert {r["status"] for r in rows if not r["complete"]} == {"stopped"}
    # the table pools what the store holds: the searcher's last value wherever that is what it reported
    assert all(r["value"] == pytest.approx(c.metric, abs=1e-12) for r in rows for c in items
               if c.index == r["index"] and r["folds_done"] == c.folds_done)


def test_a_search_stopped_midway_goes_on_and_retrains_nothing(searched):
    """Run again, the stopped search ends with num_samples candidates in total (the unfinished ones run
    again under their own index, from their stored folds) and trains no fold stored before."""
    folder, path, outcome, first, second, stopped = searched
    assert 0 < sum(c.finished for c in stopped.items) < CANDIDATES or len(stopped.items) < CANDIDATES
    unfinished = [c for c in stopped.items if not c.finished]
    assert unfinished, "the stop left no candidate unfinished"
    items = outcome.candidates.items
    assert len(items) == CANDIDATES
    assert [c.params for c in items[:len(stopped.items)]] == [c.params for c in stopped.items]
    assert not set(first) & set(second) and len(set(second)) == len(second)
    assert outcome.trained == len(second)
    store = ResultsStore(outcome.results.sweep.paths.results)
    assert all(store.intact(k) for k in first)


def test_a_complete_candidate_is_the_grid_point_of_its_values(searched, mlflow_db_template):
    """The same config run as a grid point (its `variants:` entry): the same pooled F1, and no fold trained."""
    folder, path, outcome, *_ = searched
    complete = [c for c in outcome.candidates.items if c.status == "complete"]
    shutil.copy(mlflow_db_template, folder / "wd" / "mlflow.db")
    grid = _write(folder, _doc(folder, "lr_grid", variants={f"c{c.index}": c.params for c in complete}))
    calls = {"trained": 0}
    backend = type("Counted", (InProcessBackend,), {"calls": calls})(None, progress=False)
    again = run_sweep(load_sweep(grid), backend=backend, quiet=True, progress=False, figures=False)
    assert again.trained == 0 and calls["trained"] == 0
    rows = {r["label"]: r for r in again.state.rows()}
    for c in complete:
        assert rows[f"c{c.index}"]["complete"]
        assert rows[f"c{c.index}"]["f1"] == pytest.approx(c.metric, abs=1e-12)
