"""Micro-AU CLIP: backbone with frozen-prefix caching, LSI, GSD, losses, train_fold, zero-shot MER, metrics.

Public API (docs/model.md):
    compute_prefix(model_cfg, data, aus, device="cpu") -> Prefix
    cached_prefix(model_cfg, data, aus, cache_dir, device="cpu") -> Prefix  (the same, cached on disk)
    train_fold(spec, data, test_subject, prefix=None, on_epoch=None) -> FoldResult
    fit(spec, data, train_idx, prefix=None, on_epoch=None) -> Fitted  (the training loop of train_fold)
    inference.train_model / save_model / load_package -> AUModel  (a model trained on a whole dataset)
    loso(spec, data, prefix=None, subjects=None, on_fold=None, on_epoch=None) -> [FoldResult]  (the LOSO loop)
    cross_dataset_fold(spec, train_data, test_data, train_prefix=None, test_prefix=None, on_epoch=None)
        -> FoldResult  (train on one whole dataset, test on another)
    train_folds(trials, data, test_subjects, prefix=None, on_epoch=None) -> [FoldResult]  (K folds of one
        point as one stacked model, model.stacked; each equals its train_fold within 1e-5)
    FoldResult (.to_dict() / .from_dict())
    TrialLike  (the `spec` above: what the model reads of a trial; the orchestrator's TrialConfig is one)
    metrics.pooled_metrics(results), metrics.paired_difference(results_a, results_b)

Imported lazily, so `model.config` (read by the sweep schema) does not pull in torch and open_clip.
"""
import importlib

_LAZY = {"compute_prefix": "model.prefix", "cached_prefix": "model.prefix", "Prefix": "model.prefix",
         "FoldResult": "model.result", "train_fold": "model.train", "cross_dataset_fold": "model.train",
         "loso": "model.train", "FoldError": "model.train", "metrics": "model.metrics", "fit": "model.train",
         "evaluate": "model.train", "TrialLike": "model.trial", "train_folds": "model.stacked"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    mod = importlib.import_module(_LAZY[name])
    return mod if _LAZY[name].endswith(name) else getattr(mod, name)
