"""The typed values that cross the driver/worker boundary each have one serialisation that round-trips."""
from __future__ import annotations

import json

from orchestrator.execution.jobs import FinishedFold, FoldJob
from orchestrator.spec.resolved import load_sweep

from support import REPO
from support.sweeps import fake_result


def test_a_fold_job_round_trips_through_plain_data():
    trial = load_sweep(REPO / "sweeps" / "quickstart.yaml").trials[1]
    job = FoldJob(trial=trial, subject="sub02", data="casme2@abc", prefix="p1", threads=1)
    blob = json.loads(json.dumps(job.to_dict()))  # what tune.with_parameters carries: plain data
    again = FoldJob.from_dict(blob)
    assert again == job and again.trial.hash == trial.hash and again.test_data is None


def test_a_cross_dataset_job_keeps_its_test_data():
    trial = load_sweep(REPO / "sweeps" / "cross_quickstart.yaml").trials[0]
    job = FoldJob(trial=trial, subject="all", data="casme2@a", prefix="p1", test_data="samm@b", test_prefix="p2")
    again = FoldJob.from_dict(json.loads(json.dumps(job.to_dict())))
    assert again == job and again.trial.cross and (again.test_data, again.test_prefix) == ("samm@b", "p2")


def test_a_finished_fold_round_trips_as_one_json_text():
    result = fake_result("sub01")
    fold = FinishedFold(result=result, node={"node_id": "n1", "gpu_ids": ""}, timings={"fold_s": 1.5})
    text = fold.dumps()
    assert isinstance(text, str) and FinishedFold.loads(text) == fold
