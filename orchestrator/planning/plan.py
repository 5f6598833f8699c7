"""The plan of a sweep: its folds (datasets x points (variants x grid) x seeds x test subjects; under the
cross-dataset protocol, one unit per pair x point x seed), the prepared datasets they read and which of
them the results store already holds, built once and handed on.

`Sweep.trials` holds one resolved `TrialConfig` per (dataset, point, seed); a fold adds the test
subject and the prepared-data key, which together make the results-store key. `make_plan` assembles a
`Plan` from the datasets at hand: prepared ones (`run`, `fold`), or what was recorded of them (`report`,
`plan`; orchestrator.planning.data.prepared_or_recorded). `run`, `report`, `fold` and `plan` all read this one
object; nothing after it expands the sweep again.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.planning.data import data_id, data_ids, dataset_info, prepared_or_recorded
from orchestrator.planning.store import ResultsStore, fold_key
from orchestrator.spec.resolved import Sweep
from orchestrator.spec.schema import TrialConfig, stable_hash

# The `subject` of a cross-dataset unit: it tests on every subject of its test dataset
CROSS_SUBJECT = "all"


@dataclass(frozen=True)
class Fold:
    """One unit of work: a LOSO fold (trial, test subject, prepared-data key), or a cross-dataset unit
    (trial of a pair, CROSS_SUBJECT, the train and the test dataset's prepared-data keys)."""
    trial: TrialConfig
    subject: str
    data_key: str
    test_data_key: str | None = None  # cross-dataset: the test dataset's prepared-data key

    @property
    def key(self) -> str:
        return fold_key(self.trial.hash, self.subject, self.trial.seed, self.data_key, self.test_data_key)

    @property
    def data_keys(self) -> list[str]:
        """The prepared-data keys of the datasets it reads, in `trial.reads` order."""
        return [self.data_key] + ([self.test_data_key] if self.test_data_key else [])

    @property
    def group(self) -> str:
        """The (dataset, point, seed) it belongs to: one MLflow parent run and one table row."""
        return group_key(self.trial, self.data_key, self.test_data_key)

    def meta(self) -> dict[str, object]:
        t = self.trial
        cross = {"train": t.train, "test": t.test, "test_data_key": self.test_data_key} if t.cross else {}
        return {"dataset": t.dataset, "reader": t.reader, "point": t.point, "point_label": t.point_label,
                "variant": t.variant, "params": t.params, "seed": t.seed, "subject": self.subject,
                "config_hash": t.hash, "data_key": self.data_key, "group": self.group,
                "aus": list(t.aus), **cross}


def group_key(trial: TrialConfig, data_key: str, test_data_key: str | None = None) -> str:
    return stable_hash({"config": trial.hash, "data": data_key,
                        **({"test_data": test_data_key} if test_data_key else {})})


def test_subjects(sweep: Sweep, dataset: str, available: Sequence[str]) -> list[str]:
    """The test subjects to run for `dataset`: `subjects:` of the sweep file, else every subject.

    Training always uses all the other subjects of the prepared dataset, whatever `subjects:` says.
    """
    avail = sorted(set(str(s) for s in available))
    wanted = sweep.datasets[dataset].subjects
    if wanted is None:
        return avail
    missing = [s for s in wanted if s not in avail]
    if missing:
        raise ConfigError(f"{sweep.source}: datasets.{dataset}.subjects: {missing} not in the prepared "
                          f"dataset (it has {avail}); fix the list or remove it to run every subject")
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"{sweep.source}: datasets.{dataset}.subjects lists a subject twice: {wanted}")
    return list(wanted)


def expand(sweep: Sweep, subjects: dict[str, Sequence[str]], data_keys: dict[str, str]) -> list[Fold]:
    """Every fold of the sweep, in a stable order (dataset, point, seed, subject).

    Both mappings are keyed by `orchestrator.planning.data.data_id(trial)` (a dataset under one preprocessing
    setting): `subjects[id]` are the subjects present in that prepared dataset, `data_keys[id]` its key.
    Trials whose data id is in neither (a dataset not prepared yet: `plan` only) get no folds.
    """
    folds = []
    for trial in sweep.trials:
        if trial.cross:  # one unit: every sample of the train dataset, then every sample of the test one
            train, test = data_ids(trial)
            if train in subjects and test in subjects:
                folds.append(Fold(trial=trial, subject=CROSS_SUBJECT, data_key=data_keys[train],
                                  test_data_key=data_keys[test]))
            continue
        did = data_id(trial)
        if did not in subjects:
            continue
        present = subjects[did]
        if len(set(map(str, present))) < 2:
            raise ConfigError(f"{sweep.source}: datasets.{trial.dataset}: LOSO needs at least 2 subjects, the "
                              f"prepared dataset has {sorted(set(present))}")
        for s in test_subjects(sweep, trial.dataset, present):
            folds.append(Fold(trial=trial, subject=s, data_key=data_keys[did]))
    keys = [f.key for f in folds]
    if len(set(keys)) != len(keys):
        dup = sorted({f.trial.point_label for f in folds if keys.count(f.key) > 1})
        raise ConfigError(f"{sweep.source}: points {dup} resolve to the same configuration; remove the "
                          f"duplicates from grid/variants")
    return folds


@dataclass(frozen=True)
class Plan:
    """A sweep expanded once: everything `run`, `report`, `fold` and `plan` need to know before training."""
    sweep: Sweep
    # data id -> the prepared dataset, or what the last run recorded of it (key, subjects, notes); None
    # when it is neither prepared here nor recorded (only `plan` builds such a plan)
    datasets: dict[str, Any]
    folds: list[Fold]
    stored: frozenset[str]  # keys of the folds the results store holds intact
    store: ResultsStore
    recorded: frozenset[str] = field(default_factory=frozenset)  # data ids known only from the record

    @property
    def trials(self) -> tuple[TrialConfig, ...]:
        return self.sweep.trials

    @property
    def todo(self) -> list[Fold]:
        """The folds to train, in sweep order."""
        return [f for f in self.folds if f.key not in self.stored]

    def info(self) -> dict[str, dict[str, Any]]:
        """data id -> what the sweep keeps of each known dataset (orchestrator.planning.data.dataset_info)."""
        return {i: dataset_info(d) for i, d in self.datasets.items() if d is not None}


def make_plan(sweep: Sweep, datasets: dict[str, Any], store: ResultsStore | None = None,
              recorded: Sequence[str] = ()) -> Plan:
    """The plan of `sweep` over `datasets` (data id -> prepared dataset or its recorded info, None when
    unknown): every fold, and which are stored intact (a damaged record is set aside with a warning and
    its fold counts as not stored)."""
    store = store or ResultsStore(sweep.paths.results)
    known = {i: d for i, d in datasets.items() if d is not None}
    folds = expand(sweep, {i: d.subjects for i, d in known.items()}, {i: d.key for i, d in known.items()})
    stored = frozenset(f.key for f in folds if store.intact(f.key))
    return Plan(sweep=sweep, datasets=dict(datasets), folds=folds, stored=stored, store=store,
                recorded=frozenset(recorded))


def plan_from_store(sweep: Sweep, strict: bool) -> Plan:
    """The sweep's plan without preprocessing (`plan`, `report`): prepared or recorded datasets (strict: one
    that is neither is an error; else it is left out, to be prepared first) and the results store."""
    datasets = prepared_or_recorded(sweep, sweep.trials, strict=strict)
    recorded = [i for i, d in datasets.items() if d is not None and d.origin == "recorded"]
    return make_plan(sweep, datasets, recorded=recorded)
