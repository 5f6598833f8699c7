"""The full model on the real pipeline's output: the synthetic CASME II-layout dataset (preprocessing's
generator -> landmarks -> magnification -> flow, via the `prepared_casme2` fixture), short LOSO."""
from types import SimpleNamespace

import numpy as np
import pytest

from model import compute_prefix, loso, metrics, train_fold
from model.config import ModelConfig, TrainConfig

from support.data import beats_constant_baselines

AUS = [1, 2, 4, 7, 12, 14, 15, 17]
MODEL = ModelConfig(arch="microau-tiny", pretrained="none", trainable_blocks=1)
SPEC = SimpleNamespace(reader="casme2", aus=AUS, seed=1, model=MODEL,
                       training=TrainConfig(epochs=20, batch_size=8, lr_step_epoch=15, device="cpu",
                                            alpha=0.6, beta=1.0))


def _loso(data, prefix):
    return loso(SPEC, data, prefix=prefix)


@pytest.fixture(scope="module")
def runs(prepared_casme2):
    prefix = compute_prefix(MODEL, prepared_casme2, AUS)
    return _loso(prepared_casme2, prefix), _loso(prepared_casme2, prefix)


def test_full_model_beats_constant_baselines_on_synthetic_casme2(runs):
    first, _ = runs
    # measured (docs/model.md, bench/synthetic_loso.py): pooled F1 0.62 / ACC 0.91 vs all-positive F1 0.30
    # and all-negative F1 0.00
    m, base = beats_constant_baselines(first, margin=0.2, folds=4, samples=24)
    assert m["acc"] > base["all_negative"]["acc"]
    assert m["ci"]["f1"][0] <= m["f1"] <= m["ci"]["f1"][1]


def test_synthetic_loso_is_repeatable_bit_for_bit(runs):
    first, second = runs
    for a, b in zip(first, second, strict=False):
        assert np.array_equal(a.probs, b.probs)
        assert np.array_equal(a.features, b.features) and np.array_equal(a.mer_scores, b.mer_scores)
        assert a.loss_curve == b.loss_curve


def test_samm_layout_fold_with_samm_defaults(synth_samm, tmp_path_factory):
    """SAMM: 4 AUs, subjects like '006', the paper's SAMM alpha/beta filled in when unset."""
    from preprocessing import prepare_dataset
    from preprocessing.config import PreprocessConfig

    from support.data import TEST_PREPROCESS

    data = prepare_dataset("samm", synth_samm, PreprocessConfig.model_validate(TEST_PREPROCESS),
                           tmp_path_factory.mktemp("samm-cache"), progress=False)
    spec = SimpleNamespace(reader="samm", aus=[2, 4, 7, 12], seed=1, model=MODEL,
                           training=TrainConfig(epochs=2, batch_size=4, device="cpu"))
    subject = sorted(set(data.subjects))[0]
    r = train_fold(spec, data, subject)
    assert r.probs.shape == (data.subjects.count(subject), 4) and r.mer_scores.shape[1] == 3
    assert (r.extras["alpha"], r.extras["beta"]) == (1.0, 0.6)  # paper IV-C, SAMM
    assert metrics.pooled_metrics([r])["n_samples"] == len(r.sample_ids)
