"""Expansion of a sweep into folds: datasets x points (variants x grid) x seeds x test subjects.

`SweepSpec.trials()` gives one resolved `TrialConfig` per (dataset, point, seed); a fold adds the test
subject and the prepared-data key, which together make the results-store key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

from orchestrator.config import ConfigError, SweepSpec, TrialConfig, stable_hash
from orchestrator.store import fold_key


@dataclass(frozen=True)
class Fold:
    trial: TrialConfig
    subject: str
    data_key: str

    @property
    def key(self) -> str:
        return fold_key(self.trial.hash, self.subject, self.trial.seed, self.data_key)

    @property
    def group(self) -> str:
        """The (dataset, point, seed) it belongs to: one MLflow parent run and one table row."""
        return group_key(self.trial, self.data_key)

    def meta(self) -> Dict[str, object]:
        t = self.trial
        return {"dataset": t.dataset, "reader": t.reader, "point": t.point, "point_label": t.point_label,
                "variant": t.variant, "params": t.params, "seed": t.seed, "subject": self.subject,
                "config_hash": t.hash, "data_key": self.data_key, "group": self.group,
                "aus": list(t.aus)}


def group_key(trial: TrialConfig, data_key: str) -> str:
    return stable_hash({"config": trial.hash, "data": data_key})


def test_subjects(spec: SweepSpec, dataset: str, available: Sequence[str]) -> List[str]:
    """The test subjects to run for `dataset`: `subjects:` of the sweep file, else every subject.

    Training always uses all the other subjects of the prepared dataset, whatever `subjects:` says.
    """
    avail = sorted(set(str(s) for s in available))
    wanted = spec.datasets[dataset].subjects
    if wanted is None:
        return avail
    missing = [s for s in wanted if s not in avail]
    if missing:
        raise ConfigError(f"{spec.source}: datasets.{dataset}.subjects: {missing} not in the prepared "
                          f"dataset (it has {avail}); fix the list or remove it to run every subject")
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"{spec.source}: datasets.{dataset}.subjects lists a subject twice: {wanted}")
    return list(wanted)


def expand(spec: SweepSpec, subjects: Dict[str, Sequence[str]], data_keys: Dict[str, str]) -> List[Fold]:
    """Every fold of the sweep, in a stable order (dataset, point, seed, subject).

    Both mappings are keyed by `orchestrator.data.data_id(trial)` (a dataset under one preprocessing
    setting): `subjects[id]` are the subjects present in that prepared dataset, `data_keys[id]` its key.
    """
    from orchestrator.data import data_id

    folds = []
    for name in spec.datasets:
        for trial in spec.trials(name):
            did = data_id(trial)
            present = subjects[did]
            if len(set(map(str, present))) < 2:
                raise ConfigError(f"{spec.source}: datasets.{name}: LOSO needs at least 2 subjects, the "
                                  f"prepared dataset has {sorted(set(present))}")
            for s in test_subjects(spec, name, present):
                folds.append(Fold(trial=trial, subject=s, data_key=data_keys[did]))
    keys = [f.key for f in folds]
    if len(set(keys)) != len(keys):
        dup = sorted({f.trial.point_label for f in folds if keys.count(f.key) > 1})
        raise ConfigError(f"{spec.source}: points {dup} resolve to the same configuration; remove the "
                          f"duplicates from grid/variants")
    return folds
