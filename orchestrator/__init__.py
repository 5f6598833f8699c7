"""Sweeps: YAML schema, expansion into LOSO folds, the Ray Tune runner, MLflow tracking, results store.

Modules (data flows top to bottom):
    config.py     SweepSpec / TrialConfig: one validated sweep file, one resolved config per
                  (dataset, point, seed), with a stable hash
    plan.py       Fold: a TrialConfig + test subject + prepared-data key; `expand(spec, subjects, keys)` (keyed by `data.data_id`)
    data.py       `prepare(spec, name)`: ${ENV} roots, synthetic data on first use, the dataset cache
    fold.py       `run_fold(trial, data, subject, prefix)`: what every trial and `microau-sweep fold` run
    store.py      ResultsStore: one atomic JSON per finished fold, keyed by `fold_key(...)`
    tracking.py   Tracker: MLflow parent run per (dataset, point, seed), child run per fold (driver only),
                  with bounded waits: an unreachable store fails within seconds
    report.py     SweepState: store + MLflow + pooled metrics as folds finish; table rows, CSV/JSON; MLflow
                  failures are one warning and turn tracking off for the run
    lock.py       WorkdirLock: `<workdir>/run.lock` (fcntl.flock), one `run` per workdir at a time
    runner.py     `run_sweep(spec, address=None)`: Ray Tune with tune.with_parameters/with_resources
    view.py       rich live view and final tables
    cli_sweep.py  `microau-sweep fold | run | report`
"""
