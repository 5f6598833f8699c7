"""What one sweep trial executes: one LOSO fold (or one cross-dataset unit), callable without Ray
(`microau-sweep fold`).

The Ray trainable (orchestrator/runner.py) and the `fold` command both call `run_fold`, which runs the
model's LOSO loop (`model.train.loso`) for one test subject; the frozen prefix is computed by
`prefix_for` on the driver (once per `prefix_group`: dataset and backbone) and handed in.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional

from orchestrator.config import TrialConfig, stable_hash


def prefix_group(trial: TrialConfig, data_key: str) -> str:
    """Which trials can share one frozen prefix: same prepared data, AU list and the config fields the
    prefix depends on (model.prefix.PREFIX_FIELDS)."""
    from model.prefix import PREFIX_FIELDS

    model = {k: v for k, v in trial.model.model_dump(mode="json").items() if k in PREFIX_FIELDS}
    return stable_hash({"data": data_key, "aus": trial.aus, "model": model})


def prefix_for(trial: TrialConfig, data, cache_dir, device: str = "cpu"):
    """The frozen-prefix features of `data` for the trial's backbone, from the on-disk cache in
    `cache_dir` or computed (model.cached_prefix)."""
    from model import cached_prefix

    return cached_prefix(trial.model, data, trial.aus, cache_dir, device)


def run_fold(trial: TrialConfig, data, subject: str, prefix=None,
             on_epoch: Optional[Callable[..., None]] = None, threads: Optional[int] = None,
             test_data=None, test_prefix=None) -> Dict[str, Any]:
    """Train on every subject but `subject`, evaluate on it -> the FoldResult as a plain dict. A
    cross-dataset trial (`trial.cross`) trains on every sample of `data` and evaluates on every sample of
    `test_data` (`model.cross_dataset_fold`; `subject` labels the unit, `test_prefix` is the test data's).

    `threads` (torch intra-op threads) applies when the config's training.threads is unset; a Ray trial
    passes its CPU share.
    """
    import torch

    n = trial.training.threads or threads
    if n:
        torch.set_num_threads(int(n))
    if trial.cross:
        from model import cross_dataset_fold

        if test_data is None:
            raise ValueError(f"{trial.dataset}: a cross-dataset trial needs its test dataset")
        return cross_dataset_fold(trial, data, test_data, train_prefix=prefix, test_prefix=test_prefix,
                                  on_epoch=on_epoch, label=subject).to_dict()
    from model import loso

    return loso(trial, data, prefix=prefix, subjects=[subject], on_epoch=on_epoch)[0].to_dict()


def dumps(result: Dict[str, Any]) -> str:
    return json.dumps(result, separators=(",", ":"))
