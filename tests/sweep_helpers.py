"""Shared test helpers for the orchestrator tests (imported as a plain module: pytest puts tests/ on sys.path)."""
from __future__ import annotations

import zlib
from types import SimpleNamespace

import numpy as np

from orchestrator.data import data_id

AUS = [2, 4, 7, 12]


def by_data_id(spec, subjects_by_dataset, keys_by_dataset):
    """Per-dataset subjects and prepared-data keys -> the mappings `expand` takes (keyed by data id)."""
    ids = {data_id(t): t.dataset for t in spec.trials()}
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
                      {"text_similarity": {str(a): float(v) for a, v in zip(AUS, text_similarity)}}).to_dict()


def fake_training(setattr, subjects=("006", "007", "008"), data_key="datakey", calls=None):
    """Make `run_sweep` (and so `microau-sweep run`) run without data, Ray or training: every dataset
    has `subjects`, and the "tuner" finishes each fold to train with `fake_result` through the same
    SweepState events the Tune callback sends. `setattr` is monkeypatch.setattr (or builtins.setattr in
    a subprocess). Returns a dict counting prepared datasets and trained folds."""
    import orchestrator.runner as runner

    calls = {"prepared": 0, "trained": 0} if calls is None else calls

    def prepare_all(spec, trials, progress=True, **kw):
        calls["prepared"] += 1
        return {data_id(t): SimpleNamespace(key=data_key, subjects=list(subjects)) for t in trials}

    class Tuner:
        def __init__(self, todo, state):
            self.todo, self.state = todo, state

        def fit(self):
            for f in self.todo:
                self.state.started(f.key)
                self.state.finished(f.key, fake_result(f.subject), {"node_id": "fake", "hostname": "here"})
                calls["trained"] += 1

    setattr(runner, "prepare_all", prepare_all)
    setattr(runner, "connect", lambda *a, **k: False)
    setattr(runner, "check_resources", lambda *a, **k: {})
    setattr(runner, "_prefixes_and_plan", lambda spec, todo, datasets: ({}, {}))
    setattr(runner, "_tuner", lambda spec, todo, plan, datasets, prefixes, state, *a: Tuner(todo, state))
    return calls


def inprocess_training(setattr, calls=None):
    """Make `run_sweep` train for real, without Ray: the folds to train run one after another in this
    process through `run_fold` (what a trial runs) on the driver's prepared data and prefixes, and reach
    the SweepState through the events the Tune callback sends. Returns a dict counting trained folds."""
    import orchestrator.runner as runner
    from orchestrator.trial import run_fold

    calls = {"trained": 0} if calls is None else calls

    class Tuner:
        def __init__(self, todo, jobs, datasets, prefixes, state):
            self.todo, self.jobs, self.datasets, self.prefixes, self.state = todo, jobs, datasets, prefixes, state

        def fit(self):
            for f in self.todo:
                self.state.started(f.key)
                result = run_fold(f.trial, self.datasets[data_id(f.trial)], f.subject,
                                  prefix=self.prefixes[self.jobs[f.key]["prefix"]], threads=1,
                                  on_epoch=lambda info, key=f.key: self.state.progress(key, info))
                self.state.finished(f.key, result, {"node_id": "in-process", "hostname": "here"})
                calls["trained"] += 1

    setattr(runner, "connect", lambda *a, **k: False)
    setattr(runner, "check_resources", lambda *a, **k: {})
    setattr(runner, "_tuner", lambda spec, todo, jobs, datasets, prefixes, state, *a:
            Tuner(todo, jobs, datasets, prefixes, state))
    return calls


if __name__ == "__main__":  # `python tests/sweep_helpers.py run SWEEP ...`: the CLI with fake training
    import builtins
    import sys

    from orchestrator.cli import main

    fake_training(builtins.setattr)
    main(sys.argv[1:])
