"""Shared test helpers for the orchestrator tests (imported as a plain module: pytest puts tests/ on sys.path)."""
from __future__ import annotations

import zlib
from types import SimpleNamespace

import numpy as np

from orchestrator.planning.data import data_id

AUS = [2, 4, 7, 12]


def by_data_id(spec, subjects_by_dataset, keys_by_dataset):
    """Per-dataset subjects and prepared-data keys -> the mappings `expand` takes (keyed by data id)."""
    ids = {data_id(t): t.dataset for t in spec.trials}
    return ({i: subjects_by_dataset[n] for i, n in ids.items()}, {i: keys_by_dataset[n] for i, n in ids.items()})


def fake_datasets(spec, subjects_by_dataset, keys_by_dataset):
    """Stand-ins of the prepared datasets (key and subjects only), keyed by data id as `make_plan` takes
    them."""
    subjects, keys = by_data_id(spec, subjects_by_dataset, keys_by_dataset)
    return {i: SimpleNamespace(key=keys[i], subjects=list(subjects[i])) for i in subjects}


def fake_result(subject: str, seed: int = 0, n: int = 5, text_similarity=None) -> dict:
    """A FoldResult dict as a trial would report it (random but reproducible per subject and seed);
    `text_similarity`: one value per AU (Table III TextSi), else no extras."""
    from model.result import FoldResult

    rng = np.random.default_rng(zlib.crc32(f"{subject}:{seed}".encode()))
    ids = [f"{subject}/{subject}_{i}" for i in range(n)]
    mer = ["positive", "negative", "surprise", None, "negative"][:n]
    return FoldResult(test_subject=subject, seed=1, aus=AUS, sample_ids=ids, subjects=[subject] * n,
                      probs=rng.random((n, len(AUS))).astype(np.float32),
                      labels=(rng.random((n, len(AUS))) > 0.5).astype(np.uint8),
                      features=rng.standard_normal((n, len(AUS), 8)).astype(np.float32),
                      mer_classes=["positive", "negative", "surprise"],
                      mer_scores=rng.standard_normal((n, 3)).astype(np.float32), mer_labels=mer,
                      loss_curve={"total": [2.0, 1.0]}, timings={"total_s": 0.1}, n_train=10,
                      extras={} if text_similarity is None else
                      {"text_similarity": {str(a): float(v)
                                              for a, v in zip(AUS, text_similarity, strict=False)}}).to_dict()


class FakeBackend:
    """A `Backend` (orchestrator.execution.runner) without data, Ray or training: every dataset has
    `subjects`, and each fold to train finishes at once with `fake_result`, through the same SweepState
    events the Tune callback sends. Constructed like `RayTuneBackend` (so it can stand in for it)."""

    subjects = ("006", "007", "008")
    data_key = "datakey"
    calls = {"prepared": 0, "trained": 0}
    real_data = False  # True: the datasets are prepared for real (real keys and subjects), training is fake

    def __init__(self, sweep, address=None, **kw):
        self.sweep = sweep

    def prepare(self, sweep, trials):
        self.calls["prepared"] += 1
        if self.real_data:
            from orchestrator.planning.data import prepare_all

            return prepare_all(sweep, trials, progress=False)
        return {data_id(t): SimpleNamespace(key=self.data_key, subjects=list(self.subjects)) for t in trials}

    def start(self):
        pass

    def inputs(self, sweep, todo, datasets):
        from orchestrator.execution.runner import FoldInputs

        return FoldInputs(prefixes={}, jobs={})

    def run(self, sweep, todo, inputs, datasets, state, timings):
        for f in todo:
            state.started(f.key)
            state.finished(f.key, fake_result(f.subject), {"node_id": "fake", "hostname": "here"})
            self.calls["trained"] += 1

    def close(self):
        pass


def fake_training(setattr, subjects=("006", "007", "008"), data_key="datakey", calls=None, real_data=False):
    """Make `run_sweep` (and so `microau-sweep run`) use a FakeBackend in place of Ray Tune (`setattr` is
    monkeypatch.setattr, or builtins.setattr in a subprocess). Returns a dict counting prepared datasets
    and trained folds."""
    import orchestrator.execution.runner as runner

    calls = {"prepared": 0, "trained": 0} if calls is None else calls
    fake = type("Fake", (FakeBackend,), {"subjects": tuple(subjects), "data_key": data_key, "calls": calls,
                                         "real_data": real_data})
    setattr(runner, "RayTuneBackend", fake)
    return calls


class InProcessBackend:
    """A `Backend` that trains for real without Ray: the datasets are prepared in this process, and the
    folds to train run one after another through `run_fold` (what a trial runs) on the driver's
    prepared data and prefixes, reaching the SweepState through the events the Tune callback sends."""

    calls = {"trained": 0}

    def __init__(self, sweep, address=None, progress=True, **kw):
        self.progress = progress

    def prepare(self, sweep, trials):
        from orchestrator.planning.data import prepare_all

        return prepare_all(sweep, trials, progress=self.progress)

    def start(self):
        pass

    def inputs(self, sweep, todo, datasets):
        from orchestrator.execution.runner import fold_inputs

        return fold_inputs(sweep, todo, datasets)

    def run(self, sweep, todo, inputs, datasets, state, timings):
        from orchestrator.execution.trainable import run_fold

        for f in todo:
            job = inputs.jobs[f.key]
            state.started(f.key)
            result = run_fold(job.trial, datasets[job.data], job.subject, prefix=inputs.prefixes[job.prefix],
                              threads=1, on_epoch=lambda info, key=f.key: state.progress(key, info),
                              test_data=datasets[job.test_data] if job.test_data else None,
                              test_prefix=inputs.prefixes.get(job.test_prefix))
            state.finished(f.key, result, {"node_id": "in-process", "hostname": "here"})
            self.calls["trained"] += 1

    def close(self):
        pass


def inprocess_training(setattr, calls=None):
    """Make `run_sweep` use an InProcessBackend in place of Ray Tune. Returns a dict counting trained
    folds."""
    import orchestrator.execution.runner as runner

    calls = {"trained": 0} if calls is None else calls
    setattr(runner, "RayTuneBackend", type("InProcess", (InProcessBackend,), {"calls": calls}))
    return calls


if __name__ == "__main__":  # `python tests/support/sweeps.py run SWEEP ...`: the CLI with fake training
    import builtins
    import sys

    from orchestrator.cli import main

    fake_training(builtins.setattr)
    main(sys.argv[1:])
