"""A search's candidates reach the live state while it runs (`SweepState.add_folds`): each gets the MLflow
parent run a grid point gets, its folds the child runs, and its stored folds are brought into MLflow as a
grid run's are. No Ray: the folds are fake results (the search itself: tests/integration/test_search.py)."""
from __future__ import annotations

import shutil

import yaml

from orchestrator.execution.search import milestones
from orchestrator.execution.state import SweepState
from orchestrator.planning.candidates import load_candidates, trial_of, with_candidates
from orchestrator.planning.plan import Fold, make_plan
from orchestrator.planning.store import ResultsStore
from orchestrator.spec.resolved import load_sweep
from orchestrator.spec.search import SearchSpec

from support.sweeps import fake_datasets, fake_result

SUBJECTS = ["006", "007", "008"]


def test_a_candidate_drawn_while_the_search_runs_is_tracked_as_a_grid_point(tmp_path, mlflow_db_template):
    wd = tmp_path / "wd"
    wd.mkdir()
    shutil.copy(mlflow_db_template, wd / "mlflow.db")
    doc = {"name": "s", "workdir": str(wd), "datasets": {"samm": {"reader": "samm", "root": str(tmp_path / "no")}},
           "model": {"arch": "microau-tiny", "pretrained": "none"},
           "search": {"num_samples": 2, "space": {"training.lr_head": {"loguniform": [0.001, 0.1]}}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    sweep = load_sweep(path)
    candidates = load_candidates(sweep)
    datasets = fake_datasets(sweep, {"samm": SUBJECTS}, {"samm": "datakey"})  # the base config's data
    # no candidate yet: the plan has no fold (the base point is not run)
    state = SweepState(make_plan(with_candidates(sweep, candidates), datasets, store=ResultsStore(wd / "results")))
    state.begin([])
    assert state.groups == {}
    a, b = candidates.add("samm", {"training.lr_head": 0.01}), candidates.add("samm", {"training.lr_head": 0.02})
    stored = Fold(trial_of(sweep, b), "006", "datakey")  # b's first fold was stored by an earlier run
    ResultsStore(wd / "results").put(stored.key, fake_result("006"), stored.meta())
    for c in (a, b):
        state.add_folds([Fold(trial_of(sweep, c), s, "datakey") for s in SUBJECTS])
    assert len(state.groups) == 2
    ga = next(g for g in state.groups.values() if g.trial.point == a.index)
    gb = next(g for g in state.groups.values() if g.trial.point == b.index)
    assert gb.done == 1 and ga.done == 0 and ga.parent_id and gb.parent_id
    assert set(state.tracker.children(gb.parent_id)) == {stored.key}  # caught up as `begin` does
    for s in SUBJECTS:
        f = Fold(trial_of(sweep, a), s, "datakey")
        state.finished(f.key, fake_result(s), {"node_id": "here"})
    state.tag(ga.key, {"search.status": "complete"})
    state.close()
    assert len(state.tracker.children(ga.parent_id)) == 3 and state.trained == 3
    assert state.tracker.client.get_run(ga.parent_id).data.tags["search.status"] == "complete"
    assert ga.pooled is not None and ga.done == 3


def test_milestones_are_the_rungs_of_asha_then_the_last_fold():
    s = SearchSpec(num_samples=1, space={"training.lr_head": {"uniform": [0.1, 0.2]}},
                   early_stop={"grace_folds": 6, "reduction_factor": 3})
    assert milestones(26, s) == [6, 18, 26] and milestones(5, s) == [5]
    assert milestones(26, s.model_copy(update={"early_stop": None})) == [26]


def test_a_resumed_search_restores_the_rungs_of_its_scheduler(tmp_path):
    """ASHA's rungs rebuilt from the finished candidates' stored folds: a candidate of the rerun is compared
    with those of the earlier runs (a weak one is stopped at the first rung instead of running on)."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.execution.search import restore_rungs

    doc = {"name": "s", "workdir": str(tmp_path / "wd"), "datasets": {"samm": {"reader": "samm", "root": "/no"}},
           "model": {"arch": "microau-tiny", "pretrained": "none"},
           "search": {"num_samples": 4, "space": {"training.lr_head": {"loguniform": [0.001, 0.1]}},
                      "early_stop": {"grace_folds": 1, "reduction_factor": 3}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    sweep = load_sweep(path)
    candidates = load_candidates(sweep)
    store = ResultsStore(tmp_path / "wd" / "results")
    for lr, status, done in ((0.01, "complete", 3), (0.02, "stopped", 1), (0.03, "running", 1)):
        c = candidates.add("samm", {"training.lr_head": lr})
        c.status, c.folds_done = status, done
        for s in SUBJECTS[:done]:
            f = Fold(trial_of(sweep, c), s, "datakey")
            store.put(f.key, fake_result(s), f.meta())
    book = SimpleNamespace(state=SimpleNamespace(store=store), candidates=candidates, dataset="samm",
                           folds=lambda c: [Fold(trial_of(sweep, c), s, "datakey") for s in SUBJECTS])
    scheduler = ASHAScheduler(time_attr="folds_done", metric="score", mode="max", max_t=3, grace_period=1,
                              reduction_factor=3)
    assert restore_rungs(scheduler, book, "f1", "max") == 3  # c0 at rungs 1 and 3, c1 at rung 1; c2 unfinished
    rungs = dict(scheduler._brackets[0]._rungs)
    assert set(rungs[1]) == {"earlier-c0", "earlier-c1"} and set(rungs[3]) == {"earlier-c0"}
    weak = SimpleNamespace(trial_id="new")
    assert scheduler._brackets[0].on_result(weak, 1, min(rungs[1].values()) - 0.1) == "STOP"


def test_a_candidate_coordinator_imports_no_torch():
    """A search's coordinators (one Ray worker process per concurrent candidate, started again by every
    `run` of the search) group folds by frozen prefix and pool metrics, and never compute a prefix or train:
    what they import must not pull in torch and open_clip (seconds of CPU per process)."""
    import subprocess
    import sys

    from support import REPO

    code = ("import sys\n"
            "from orchestrator.execution.search import candidate_trainable, milestones\n"
            "from orchestrator.execution.trainable import prefix_group\n"
            "from orchestrator.spec.schema import SweepSpec\n"
            "from model.metrics import pooled_metrics\n"
            "from model.result import FoldResult\n"
            "spec = SweepSpec.model_validate({'name': 'x', 'datasets': {'c': {'reader': 'casme2', 'root': '/no'}},"
            " 'model': {'arch': 'microau-tiny', 'pretrained': 'none'}})\n"
            "prefix_group(spec.expand(spec.points())[0], 'DATAKEY')\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
