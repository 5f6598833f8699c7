"""`microau-sweep` command line: one click group; each command lives beside the code it drives."""
from __future__ import annotations

import click

from orchestrator.cli_data import preprocess, synth
from orchestrator.cli_model import predict, train
from orchestrator.cli_sweep import fold, plan_cmd, report, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="microau-sweep")
def main() -> None:
    """Micro-AU CLIP micro-expression AU detection as Ray Tune LOSO sweeps tracked in MLflow."""


for _cmd in (synth, preprocess, plan_cmd, fold, run, report, train, predict):
    main.add_command(_cmd)

if __name__ == "__main__":
    main()
