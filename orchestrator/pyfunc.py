"""Where MLflow models logged by earlier versions find their code: their models-from-code file runs
`from orchestrator.pyfunc import MicroAUPythonModel` when loaded. The flavour lives in
orchestrator/serving/pyfunc.py; this name keeps those models loadable."""
from orchestrator.serving.pyfunc import MicroAUPythonModel

__all__ = ["MicroAUPythonModel"]
