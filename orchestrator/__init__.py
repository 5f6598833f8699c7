"""Sweeps: YAML schema, the plan of LOSO folds, the Ray Tune runner, MLflow tracking, results store.

Modules, in the order a sweep file goes through them (`run`):
    config.py     SweepSpec / TrialConfig: one validated sweep file (`--set` applied), expanded once into one
                  resolved config per (dataset, point, seed), each with a stable hash
    data.py       `prepare_all(spec, trials)`: ${ENV} roots, synthetic data on first use, the dataset cache;
                  `prepared_or_recorded` (report, plan: never preprocesses), `datasets.json`
    store.py      ResultsStore: one atomic JSON per finished fold, keyed by `fold_key(...)`
    plan.py       Fold and Plan: `make_plan(spec, datasets)` -> every fold, the datasets, which folds are
                  stored; built once and handed to run, report, fold and plan
    lock.py       WorkdirLock: `<workdir>/run.lock` (fcntl.flock), one `run` per workdir at a time
    trial.py      `run_fold(trial, data, subject, prefix)`: what every Ray trial and `microau-sweep fold`
                  run (model.train.loso for one subject); `prefix_for`, `prefix_group`
    tracking.py   Tracker: MLflow parent run per (dataset, point, seed), child run per fold (driver only),
                  with bounded waits: an unreachable store fails within seconds
    state.py      SweepState: the live state of a sweep built from its Plan; writes finished folds to the
                  store and MLflow, keeps pooled metrics current; MLflow failures are one warning
    runner.py     `run_sweep(spec, address=None)`: Ray Tune with tune.with_parameters/with_resources
    report.py     tables and exports: rows, `--json`, reports/<sweep>.{csv,json}, predictions.csv,
                  `--compare`, the `plan` summary
    view.py       rich live view and final tables
    cli_errors.py the one way a command fails: a MicroAUError (preprocessing/errors.py) -> `Error: ...`
    cli_sweep.py  `microau-sweep plan | fold | run | report`

A grid point trained on a whole dataset and used on new clips (docs/predict.md):
    models.py     the model store (<workdir>/models/<key>), `train_and_store`, `log_model` (MLflow pyfunc)
    api.py        `load_model(path_or_uri)`, `predict(model, onset, apex)`, `Predictor`
    pyfunc.py     the MLflow pyfunc model and its signature (`pyfunc_model.py`: its models-from-code file)
    cli_model.py  `microau-sweep train | predict`
"""
