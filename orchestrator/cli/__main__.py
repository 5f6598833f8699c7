"""`python -m orchestrator.cli ...`: the `microau-sweep` command without its console script."""
from orchestrator.cli.main import main

main()
