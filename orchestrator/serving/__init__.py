"""A point trained on a whole dataset, used on new clips: the model store (`packages`), the predictor
(`predictor`), the MLflow pyfunc flavour (`pyfunc`, its models-from-code file `pyfunc_model`).
"""
