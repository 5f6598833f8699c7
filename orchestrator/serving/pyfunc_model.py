"""The code file of the MLflow pyfunc model that `microau-sweep train` logs (MLflow's "models from code":
MLflow copies this file into the model and runs it on load, so nothing is pickled). The model's code is
`orchestrator.serving.pyfunc`, imported from the installed microau-sweep."""
import mlflow

from orchestrator.serving.pyfunc import MicroAUPythonModel

mlflow.models.set_model(MicroAUPythonModel())
