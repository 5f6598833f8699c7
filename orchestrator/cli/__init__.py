"""The `microau-sweep` command line: the click group (`main`), one module per command group (`sweep`,
`model`, `data`), the error-to-exit mapping (`errors`) and the log handler (`logs`)."""
from orchestrator.cli.main import main

__all__ = ["main"]
