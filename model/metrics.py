"""Pooled LOSO metrics (paper IV-A; docs/protocol.md "Evaluation protocol").

Predictions of all folds are concatenated, then per AU the F1 of the positive class and the accuracy are
computed with sklearn; the paper's F1 / ACC is the plain mean over AUs. MER, over the samples with a MER
class: UF1 (macro F1) and UAR (mean recall), both over the classes present in the ground truth, and
accuracy. TextSi (Table III): the cosine similarity of each AU's positive and negative text features after
training, averaged over AUs and folds.
Confidence intervals: subject-level bootstrap (subjects resampled with replacement, fixed seed). The
per-fold average is reported separately under `per_fold` and never replaces the pooled number.

The bootstrap re-scores thousands of resamples, so it works on per-subject confusion counts (a resample
is a weighted sum of them) instead of calling sklearn thousands of times; tests/unit/model/test_metrics.py checks
that these counts give exactly sklearn's numbers on the full data.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score

from model.result import FoldResult
from preprocessing.errors import MicroAUError

N_BOOT = 1000
BOOT_SEED = 0


class MetricsError(MicroAUError, ValueError):
    pass


def _pool(results) -> dict:
    rs = [FoldResult.coerce(r) for r in results]
    if not rs:
        raise MetricsError("no fold results to pool")
    aus = rs[0].aus
    for r in rs:
        if list(r.aus) != list(aus):
            raise MetricsError(f"fold {r.test_subject} has AUs {r.aus}, the first fold {aus}: "
                               f"results of different AU lists cannot be pooled")
    ids = [i for r in rs for i in r.sample_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise MetricsError(f"samples {dup} appear in more than one fold result; pool one result per fold")
    return {
        "aus": list(aus), "results": rs, "ids": ids,
        "subjects": np.array([s for r in rs for s in r.subjects]),
        "folds": np.array([r.test_subject for r in rs for _ in r.sample_ids]),
        "y": np.concatenate([r.labels for r in rs]).astype(np.int64),
        "p": np.concatenate([r.preds for r in rs]).astype(np.int64),
        "mer_y": [m for r in rs for m in r.mer_labels],
        "mer_p": [m for r in rs for m in r.mer_preds],
    }


def _au_scores(y: np.ndarray, p: np.ndarray, aus) -> dict:
    with warnings.catch_warnings():  # one fold's AU all inactive and predicted so: F1 0 (zero_division), not news
        warnings.filterwarnings("ignore", message="A single label was found in 'y_true' and 'y_pred'")
        per_au = {int(a): {"f1": float(f1_score(y[:, j], p[:, j], pos_label=1, zero_division=0)),
                           "acc": float(accuracy_score(y[:, j], p[:, j]))} for j, a in enumerate(aus)}
    return {"f1": float(np.mean([v["f1"] for v in per_au.values()])),
            "acc": float(np.mean([v["acc"] for v in per_au.values()])), "per_au": per_au}


def _mer_scores(y: Sequence[str | None], p: Sequence[str]) -> dict | None:
    keep = [i for i, m in enumerate(y) if m is not None]
    if not keep:
        return None
    yt, yp = [y[i] for i in keep], [p[i] for i in keep]
    present = sorted(set(yt))
    # UAR: the mean recall over the classes present (balanced accuracy), with the labels given, so a test
    # subject of one class (one LOSO fold) raises no sklearn warning
    uar = float(recall_score(yt, yp, labels=present, average="macro", zero_division=0))
    return {"uf1": float(f1_score(yt, yp, labels=present, average="macro", zero_division=0)),
            "uar": uar, "acc": float(accuracy_score(yt, yp)), "n": len(keep)}


def _text_si(results) -> float | None:
    """Table III TextSi: mean over folds of the mean over AUs of cos(positive, negative text feature)
    (FoldResult.extras["text_similarity"]); None when no fold carries it (records of older versions)."""
    per_fold = [float(np.mean(list(sims.values()))) for r in results
                if (sims := (r.extras or {}).get("text_similarity"))]
    return float(np.mean(per_fold)) if per_fold else None


# -- counts for the bootstrap ---------------------------------------------------------------------------
def _au_counts(y, p, groups, names) -> np.ndarray:
    """(n_groups, A, 4) counts of TP, FP, FN, TN per group (subject)."""
    out = np.zeros((len(names), y.shape[1], 4))
    for g, name in enumerate(names):
        m = groups == name
        yy, pp = y[m], p[m]
        out[g, :, 0] = ((yy == 1) & (pp == 1)).sum(0)
        out[g, :, 1] = ((yy == 0) & (pp == 1)).sum(0)
        out[g, :, 2] = ((yy == 1) & (pp == 0)).sum(0)
        out[g, :, 3] = ((yy == 0) & (pp == 0)).sum(0)
    return out


def _f1_acc_from_counts(c: np.ndarray):
    """c (..., A, 4) -> mean-over-AU F1 (positive class, 0 where undefined, as sklearn's zero_division=0)
    and accuracy, each (...)."""
    tp, fp, fn, tn = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    tot = tp + fp + fn + tn
    acc = np.divide(tp + tn, tot, out=np.zeros_like(tp), where=tot > 0)
    return _f1_from_counts(c).mean(-1), acc.mean(-1)


def _f1_from_counts(c: np.ndarray) -> np.ndarray:
    """c (..., A, 4) -> F1 of the positive class per AU (..., A), 0 where undefined."""
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)


def _mer_conf(y, p, groups, names, classes) -> np.ndarray:
    """(n_groups, C, C) confusion counts (rows true, columns predicted) over samples with a MER class."""
    ix = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(names), len(classes), len(classes)))
    gi = {n: i for i, n in enumerate(names)}
    for yy, pp, g in zip(y, p, groups, strict=True):
        if yy is not None:
            out[gi[g], ix[yy], ix[pp]] += 1
    return out


def _mer_from_conf(cm: np.ndarray):
    """cm (..., C, C) -> UF1, UAR, ACC over the classes present in the truth of each resample."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    true, pred = cm.sum(-1), cm.sum(-2)
    present = true > 0
    den = true + pred
    f1 = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    rec = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    npres = np.maximum(present.sum(-1), 1)
    tot = np.maximum(cm.sum((-2, -1)), 1)
    return (f1 * present).sum(-1) / npres, (rec * present).sum(-1) / npres, tp.sum(-1) / tot


def _boot_weights(n_subjects: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_subjects): how many times each subject is drawn in each resample."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_subjects, size=(n_boot, n_subjects))
    return np.stack([np.bincount(d, minlength=n_subjects) for d in draws]).astype(np.float64)


def _ci(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


# -- public ---------------------------------------------------------------------------------------------
def pooled_metrics(results, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict:
    """Pooled F1/ACC (mean over AUs), per AU, MER, TextSi, subject-bootstrap 95% CIs and the per-fold
    average."""
    d = _pool(results)
    out = _au_scores(d["y"], d["p"], d["aus"])
    out["mer"] = _mer_scores(d["mer_y"], d["mer_p"])
    out["text_si"] = _text_si(d["results"])
    names = sorted(set(d["subjects"].tolist()))
    wts = _boot_weights(len(names), n_boot, seed)
    counts = _au_counts(d["y"], d["p"], d["subjects"], names)
    f1_b, acc_b = _f1_acc_from_counts(np.einsum("bs,sak->bak", wts, counts))
    out["ci"] = {"f1": _ci(f1_b), "acc": _ci(acc_b), "level": 0.95, "n_boot": n_boot,
                 "unit": "subject", "seed": seed}
    if out["mer"] is not None:
        classes = list(d["results"][0].mer_classes)
        cm = np.einsum("bs,scd->bcd", wts, _mer_conf(d["mer_y"], d["mer_p"], d["subjects"], names, classes))
        uf1, uar, acc = _mer_from_conf(cm)
        out["mer"]["ci"] = {"uf1": _ci(uf1), "uar": _ci(uar), "acc": _ci(acc)}
    folds = {}
    for r in d["results"]:
        s = _au_scores(r.labels.astype(np.int64), r.preds.astype(np.int64), d["aus"])
        folds[r.test_subject] = {"f1": s["f1"], "acc": s["acc"], "n": len(r.sample_ids)}
    out["per_fold"] = {"f1_mean_of_folds": float(np.mean([v["f1"] for v in folds.values()])),
                       "acc_mean_of_folds": float(np.mean([v["acc"] for v in folds.values()])),
                       "folds": folds,
                       "note": "average of per-fold scores; not the paper's pooled F1/ACC"}
    out["n_samples"] = len(d["ids"])
    out["n_folds"] = len(d["results"])
    out["aus"] = d["aus"]
    return out


def per_au_f1_ci(results, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict[int, list[float]]:
    """Per AU, the 95% subject-bootstrap CI of its pooled F1 (the resamples of `pooled_metrics`' `ci`:
    same subjects, seed and count), {AU: [low, high]}; for the per-AU F1 figure."""
    d = _pool(results)
    names = sorted(set(d["subjects"].tolist()))
    c = np.einsum("bs,sak->bak", _boot_weights(len(names), n_boot, seed),
                  _au_counts(d["y"], d["p"], d["subjects"], names))
    f1 = _f1_from_counts(c)  # (n_boot, A)
    return {int(a): _ci(f1[:, j]) for j, a in enumerate(d["aus"])}


def baselines(results) -> dict[str, dict]:
    """Pooled F1/ACC of constant predictors (all positive, all negative) on the same pooled labels."""
    d = _pool(results)
    return {name: {k: v for k, v in _au_scores(d["y"], np.full_like(d["y"], c), d["aus"]).items()
                   if k in ("f1", "acc")}
            for name, c in (("all_positive", 1), ("all_negative", 0))}


def paired_difference(results_a, results_b, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict:
    """Point A minus point B on the same samples: pooled F1/ACC difference with a subject-bootstrap CI
    (both points scored on the same resampled subjects in each resample)."""
    a, b = _pool(results_a), _pool(results_b)
    if a["aus"] != b["aus"]:
        raise MetricsError(f"the two points have different AUs ({a['aus']} vs {b['aus']})")
    if set(a["ids"]) != set(b["ids"]):
        only = sorted(set(a["ids"]) ^ set(b["ids"]))[:3]
        raise MetricsError(f"the two points were not scored on the same samples (e.g. {only}); "
                           f"compare points whose folds are all finished")
    order = {i: k for k, i in enumerate(b["ids"])}
    perm = np.array([order[i] for i in a["ids"]])
    yb, pb = b["y"][perm], b["p"][perm]
    sa, sb = _au_scores(a["y"], a["p"], a["aus"]), _au_scores(yb, pb, a["aus"])
    names = sorted(set(a["subjects"].tolist()))
    wts = _boot_weights(len(names), n_boot, seed)
    fa, aa = _f1_acc_from_counts(np.einsum("bs,sak->bak", wts, _au_counts(a["y"], a["p"], a["subjects"], names)))
    fb, ab = _f1_acc_from_counts(np.einsum("bs,sak->bak", wts, _au_counts(yb, pb, a["subjects"], names)))
    df = fa - fb
    return {"f1_a": sa["f1"], "f1_b": sb["f1"], "f1_diff": sa["f1"] - sb["f1"], "f1_diff_ci": _ci(df),
            "acc_a": sa["acc"], "acc_b": sb["acc"], "acc_diff": sa["acc"] - sb["acc"], "acc_diff_ci": _ci(aa - ab),
            "p_boot": float(min(1.0, 2 * min((df <= 0).mean(), (df >= 0).mean()))),
            "n_samples": len(a["ids"]), "n_subjects": len(names), "n_boot": n_boot, "seed": seed}


def seed_summary(results_by_seed: dict[int, Sequence]) -> dict:
    """One point run with several seeds (each a full LOSO over the same samples): the mean and sample
    standard deviation (ddof=1) over seeds of the pooled F1/ACC, per-AU F1 and MER UF1, and the pooled
    numbers over all seeds: every seed's predictions concatenated (each test sample counts once per seed),
    then F1/ACC per AU and the mean over AUs as for one seed."""
    if len(results_by_seed) < 2:
        raise MetricsError(f"a summary over seeds needs at least two seeds, got {sorted(results_by_seed)}")
    pools = {s: _pool(r) for s, r in results_by_seed.items()}
    first_seed, first = next(iter(pools.items()))
    for s, d in pools.items():
        if d["aus"] != first["aus"] or set(d["ids"]) != set(first["ids"]):
            raise MetricsError(f"seeds {first_seed} and {s} were not scored on the same samples and AUs; "
                               f"summarise seeds whose folds are all finished")
    per_seed = {s: _au_scores(d["y"], d["p"], d["aus"]) for s, d in pools.items()}
    pooled = _au_scores(np.concatenate([d["y"] for d in pools.values()]),
                        np.concatenate([d["p"] for d in pools.values()]), first["aus"])

    def stats(values: dict[int, float], pooled_value: float | None) -> dict:
        v = np.array(list(values.values()), dtype=np.float64)
        return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "pooled": pooled_value,
                "per_seed": {int(s): float(x) for s, x in values.items()}}

    out = {"seeds": [int(s) for s in pools], "n_seeds": len(pools), "sd": "sample standard deviation (ddof=1)",
           "f1": stats({s: m["f1"] for s, m in per_seed.items()}, pooled["f1"]),
           "acc": stats({s: m["acc"] for s, m in per_seed.items()}, pooled["acc"]),
           "per_au": {a: {"f1": stats({s: m["per_au"][a]["f1"] for s, m in per_seed.items()},
                                      pooled["per_au"][a]["f1"])} for a in pooled["per_au"]},
           "mer": None}
    mer = {s: _mer_scores(d["mer_y"], d["mer_p"]) for s, d in pools.items()}
    if all(m is not None for m in mer.values()):
        all_mer = _mer_scores([m for d in pools.values() for m in d["mer_y"]],
                              [m for d in pools.values() for m in d["mer_p"]])
        out["mer"] = {k: stats({s: m[k] for s, m in mer.items()}, all_mer[k]) for k in ("uf1", "uar", "acc")}
    return out
