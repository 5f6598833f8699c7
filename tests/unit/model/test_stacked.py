"""Stacked folds (issue 22, item 4): K folds of one point trained as one stacked model give each fold what
training it alone gives (1e-5), with folds of different sizes (batches of different sizes in a step, and
steps where a fold's epoch is over), different seeds, and the learning-rate step inside the run."""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from model import compute_prefix, train_fold, train_folds
from model.config import ModelConfig, TrainConfig
from model.train import FoldError

from support.data import CASME2_AUS, fake_prepared

MODEL = ModelConfig(arch="microau-tiny", pretrained="none", trainable_blocks=1)


def _spec(seed, model=MODEL, **train):
    t = {**dict(epochs=3, batch_size=4, alpha=0.1, beta=1.0, lr_step_epoch=2, device="cpu", weight_decay=1e-3),
         **train}
    return SimpleNamespace(reader="casme2", aus=CASME2_AUS, seed=seed, model=model, training=TrainConfig(**t))


@pytest.fixture(scope="module")
def data():
    d = fake_prepared(subjects=3, per_subject=5, seed=2)
    # subjects of 4, 5 and 6 samples: the folds train on 11, 10 and 9 samples -> batches 4+4+3, 4+4+2, 4+5
    subjects = list(d.subjects)
    subjects[4] = subjects[5]
    return dataclasses.replace(d, subjects=subjects)


@pytest.fixture(scope="module")
def prefix(data):
    return compute_prefix(MODEL, data, CASME2_AUS)


@pytest.mark.parametrize("change", [{}, {"model": MODEL.model_copy(update={"contrastive": "global_origcl"})}],
                         ids=["full", "global_origcl"])
def test_each_stacked_fold_is_the_fold_trained_alone(data, prefix, change):
    subjects = sorted(set(data.subjects))
    trials = [_spec(seed, **change) for seed in (1, 2, 3)]
    epochs = []
    stacked = train_folds(trials, data, subjects, prefix=prefix, on_epoch=epochs.append)
    assert [(e["fold"], e["epoch"]) for e in epochs] == [(k, e) for e in (1, 2, 3) for k in range(3)]
    for trial, s, got in zip(trials, subjects, stacked, strict=True):
        want = train_fold(trial, data, s, prefix=prefix)
        assert got.test_subject == s and got.sample_ids == want.sample_ids and got.n_train == want.n_train
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-5)
        np.testing.assert_allclose(got.features, want.features, atol=1e-5)
        np.testing.assert_allclose(got.mer_scores, want.mer_scores, atol=1e-5)
        for k, v in want.loss_curve.items():
            np.testing.assert_allclose(got.loss_curve[k], v, rtol=1e-5, atol=1e-5)
        assert got.extras["stacked_folds"] == 3


def test_folds_of_different_points_are_refused(data, prefix):
    with pytest.raises(FoldError, match="training.epochs"):
        train_folds([_spec(1), _spec(1, epochs=2)], data, ["sub01", "sub02"], prefix=prefix)
    with pytest.raises(FoldError, match="optimizer"):
        train_folds([_spec(1, optimizer="adamw")], data, ["sub01"], prefix=prefix)
