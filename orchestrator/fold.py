"""One LOSO fold: exactly the code a sweep trial runs, callable without Ray (`microau-sweep fold`).

The Ray trainable (orchestrator/runner.py) and the `fold` command both call `run_fold`; the frozen
prefix is computed by `prefix_for` on the driver (once per dataset and backbone) and handed in.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional

from orchestrator.config import TrialConfig, stable_hash

# The ModelConfig fields the frozen prefix depends on (model/prefix.py `_identity`): configs that agree
# on these (and on data and AUs) share one prefix, whatever their head, losses or training settings.
_PREFIX_FIELDS = ("arch", "pretrained", "trainable_blocks", "prompts", "emotion_texts")


def prefix_group(trial: TrialConfig, data_key: str) -> str:
    """Which trials can share one frozen prefix: same prepared data, AU list and backbone/prompt config."""
    model = {k: v for k, v in trial.model.model_dump(mode="json").items() if k in _PREFIX_FIELDS}
    return stable_hash({"data": data_key, "aus": trial.aus, "model": model})


def prefix_for(trial: TrialConfig, data, cache_dir, device: str = "cpu"):
    """The frozen-prefix features of `data` for the trial's backbone, from the on-disk cache in
    `cache_dir` or computed (model.cached_prefix)."""
    from model import cached_prefix

    return cached_prefix(trial.model, data, trial.aus, cache_dir, device)


def run_fold(trial: TrialConfig, data, subject: str, prefix=None,
             on_epoch: Optional[Callable[..., None]] = None, threads: Optional[int] = None) -> Dict[str, Any]:
    """Train on every subject but `subject`, evaluate on it -> the FoldResult as a plain dict.

    `threads` (torch intra-op threads) applies when the config's training.threads is unset; a Ray trial
    passes its CPU share.
    """
    import torch

    n = trial.training.threads or threads
    if n:
        torch.set_num_threads(int(n))
    from model import train_fold

    return train_fold(trial, data, subject, prefix=prefix, on_epoch=on_epoch).to_dict()


def dumps(result: Dict[str, Any]) -> str:
    return json.dumps(result, separators=(",", ":"))
