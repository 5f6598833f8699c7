"""Sweeps of Micro-AU CLIP: the sweep file, the plan of LOSO folds, Ray Tune, MLflow, the results store,
reports, trained-model packages and the CLI. One subpackage per concern, imports pointing down this list
(docs/architecture.md has every module):

    errors.py   every error a user fixes from its message (one MicroAUError base)
    spec/       the sweep file: schema, paper numbers, the resolved sweep (`load_sweep` -> `Sweep`)
    planning/   prepared datasets, the plan of folds, the results store, the workdir lock
    tracking/   MLflow (every MLflow detail in one module) and the code version
    reporting/  the results from the store, rows and exports, tables, the terminal view, figures
    execution/  Ray, the fold jobs, the trainable, parallel preprocessing, the live state, the runner
    serving/    trained-model packages, the predictor, the MLflow pyfunc flavour
    api.py      `load_model`, `predict` for Python users
    pyfunc.py   the import path of MLflow models logged by earlier versions
    cli/        the `microau-sweep` commands
"""
