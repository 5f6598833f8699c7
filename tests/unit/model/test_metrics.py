"""Pooled metrics: sklearn numbers on the concatenated folds, subject bootstrap, per-fold kept apart."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from model import FoldResult, metrics
from model.metrics import MetricsError

AUS = [1, 2]


def _fold(subject, labels, probs, mer=None, scores=None):
    n = len(labels)
    return FoldResult(test_subject=subject, seed=1, aus=AUS, sample_ids=[f"{subject}/{i}" for i in range(n)],
                      subjects=[subject] * n, probs=np.array(probs, np.float32),
                      labels=np.array(labels, np.uint8), features=np.zeros((n, 2, 3), np.float32),
                      mer_classes=["positive", "negative", "surprise"],
                      mer_scores=np.array(scores if scores is not None else [[1, 0, 0]] * n, np.float32),
                      mer_labels=mer if mer is not None else [None] * n)


@pytest.fixture
def folds():
    a = _fold("s1", [[1, 0], [0, 0], [1, 1]], [[0.9, 0.2], [0.6, 0.1], [0.3, 0.7]],
              mer=["positive", "negative", None], scores=[[3, 1, 0], [2, 1, 0], [0, 0, 1]])
    b = _fold("s2", [[0, 1], [1, 0]], [[0.1, 0.8], [0.8, 0.6]],
              mer=["surprise", "positive"], scores=[[0, 1, 2], [0, 3, 1]])
    c = _fold("s3", [[0, 0], [0, 1]], [[0.2, 0.4], [0.5, 0.51]], mer=["negative", "negative"],
              scores=[[0, 2, 1], [1, 2, 0]])
    return [a, b, c]


def test_pooled_is_sklearn_on_concatenated_folds(folds):
    m = metrics.pooled_metrics(folds)
    y = np.concatenate([f.labels for f in folds])
    p = np.concatenate([f.probs for f in folds]) > 0.5  # argmax of the 2-way softmax
    f1s = [f1_score(y[:, j], p[:, j]) for j in range(2)]
    accs = [accuracy_score(y[:, j], p[:, j]) for j in range(2)]
    assert m["per_au"][1]["f1"] == pytest.approx(f1s[0]) and m["per_au"][2]["acc"] == pytest.approx(accs[1])
    assert m["f1"] == pytest.approx(np.mean(f1s)) and m["acc"] == pytest.approx(np.mean(accs))
    # hand check, AU1: y = 1 0 1 0 1 0 0, p = 1 1 0 0 1 0 0 -> TP 2, FP 1, FN 1 -> F1 = 4/6
    assert m["per_au"][1]["f1"] == pytest.approx(4 / 6)
    assert m["n_samples"] == 7 and m["n_folds"] == 3
    # the per-fold average is a different number, reported separately and named so
    pf = m["per_fold"]
    assert set(pf["folds"]) == {"s1", "s2", "s3"}
    assert pf["f1_mean_of_folds"] == pytest.approx(np.mean([v["f1"] for v in pf["folds"].values()]))
    assert pf["f1_mean_of_folds"] != pytest.approx(m["f1"])


def test_mer_metrics(folds):
    m = metrics.pooled_metrics(folds)["mer"]
    yt = ["positive", "negative", "surprise", "positive", "negative", "negative"]  # None excluded
    yp = ["positive", "positive", "surprise", "negative", "negative", "negative"]
    assert m["n"] == 6
    assert m["acc"] == pytest.approx(accuracy_score(yt, yp)) == pytest.approx(4 / 6)
    assert m["uar"] == pytest.approx(balanced_accuracy_score(yt, yp))
    assert m["uf1"] == pytest.approx(f1_score(yt, yp, average="macro"))


def test_a_fold_of_one_mer_class_raises_no_sklearn_warning(folds):
    """A LOSO test subject whose samples are all one emotion class (folds[2]: two negatives, both predicted
    negative) is scored alone for Tune's table: sklearn's "A single label was found" must not reach a user."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = metrics.pooled_metrics([folds[2]], n_boot=1)["mer"]
    assert (m["uar"], m["uf1"], m["acc"], m["n"]) == (1.0, 1.0, 1.0, 2)


def test_bootstrap_counts_reproduce_sklearn_and_ci_is_deterministic(folds):
    d = metrics._pool(folds)
    names = sorted(set(d["subjects"]))
    counts = metrics._au_counts(d["y"], d["p"], d["subjects"], names)
    f1, acc = metrics._f1_acc_from_counts(counts.sum(0))  # all subjects once = the full data
    m = metrics.pooled_metrics(folds)
    assert f1 == pytest.approx(m["f1"]) and acc == pytest.approx(m["acc"])
    cm = metrics._mer_conf(d["mer_y"], d["mer_p"], d["subjects"], names, ["positive", "negative", "surprise"])
    uf1, uar, macc = metrics._mer_from_conf(cm.sum(0))
    assert (uf1, uar, macc) == pytest.approx((m["mer"]["uf1"], m["mer"]["uar"], m["mer"]["acc"]))
    lo, hi = m["ci"]["f1"]
    assert lo <= hi and m["ci"]["unit"] == "subject"
    assert metrics.pooled_metrics(folds)["ci"] == m["ci"]  # fixed seed


def test_bootstrap_resamples_whole_subjects():
    w = metrics._boot_weights(5, 200, seed=0)
    assert w.shape == (200, 5) and (w.sum(1) == 5).all()  # each resample draws 5 subjects
    assert (w == 0).any()  # some subjects left out, some drawn twice


def test_paired_difference(folds):
    same = metrics.paired_difference(folds, folds)
    assert same["f1_diff"] == 0 and same["f1_diff_ci"] == [0.0, 0.0]
    perfect = [_fold(f.test_subject, f.labels.tolist(), f.labels.astype(float).tolist()) for f in folds]
    d = metrics.paired_difference(perfect, folds)
    assert d["f1_a"] == 1.0 and d["f1_diff"] == pytest.approx(1.0 - metrics.pooled_metrics(folds)["f1"])
    assert d["f1_diff_ci"][0] >= 0  # A is never worse on any resample
    with pytest.raises(MetricsError, match="same samples"):
        metrics.paired_difference(folds[:2], folds)


def test_pooling_errors(folds):
    with pytest.raises(MetricsError, match="more than one fold"):
        metrics.pooled_metrics([folds[0], folds[0]])
    with pytest.raises(MetricsError, match="no fold results"):
        metrics.pooled_metrics([])
    assert metrics.pooled_metrics([f.to_dict() for f in folds])["f1"] == metrics.pooled_metrics(folds)["f1"]
    assert metrics.pooled_metrics([_fold("s", [[0, 0]], [[0.1, 0.1]])])["mer"] is None


def test_text_si_is_the_mean_over_aus_and_folds(folds):
    """Table III TextSi: cos(positive, negative text feature) per AU (FoldResult.extras), averaged over
    the AUs of each fold, then over the folds; absent (None) when no fold carries it."""
    assert metrics.pooled_metrics(folds)["text_si"] is None
    for f, sims in zip(folds, ({"1": 0.9, "2": 0.5}, {"1": -0.9, "2": -0.7}, {"1": 0.1, "2": 0.4}), strict=False):
        f.extras = {"text_similarity": sims}
    want = ((0.9 + 0.5) / 2 + (-0.9 - 0.7) / 2 + (0.1 + 0.4) / 2) / 3
    assert metrics.pooled_metrics(folds)["text_si"] == pytest.approx(want, abs=1e-12)
    assert metrics.pooled_metrics([f.to_dict() for f in folds])["text_si"] == pytest.approx(want, abs=1e-12)
    assert metrics.pooled_metrics(folds[:1])["text_si"] == pytest.approx(0.7)


def test_per_au_f1_ci_uses_the_tables_resamples(folds):
    """Per AU, the CI of its F1 from the same subject resamples as the table's CI: with one AU the mean
    over AUs is that AU, so the two CIs are the same numbers."""
    ci = metrics.per_au_f1_ci(folds)
    assert set(ci) == set(AUS)
    for au in AUS:
        lo, hi = ci[au]
        assert 0 <= lo <= hi <= 1
    for j, au in enumerate(AUS):
        one = [FoldResult(test_subject=r.test_subject, seed=1, aus=[au], sample_ids=r.sample_ids,
                          subjects=r.subjects, probs=r.probs[:, [j]], labels=r.labels[:, [j]],
                          features=r.features[:, [j]], mer_classes=r.mer_classes, mer_scores=r.mer_scores,
                          mer_labels=r.mer_labels) for r in folds]
        assert metrics.per_au_f1_ci(one)[au] == metrics.pooled_metrics(one)["ci"]["f1"] == ci[au]
