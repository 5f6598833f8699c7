"""`microau-sweep` command line: one click group; the commands live in cli/sweep.py (plan, fold, run,
report), cli/model.py (train, predict) and cli/data.py (synth, preprocess)."""
from __future__ import annotations

import click

from orchestrator.cli import logs
from orchestrator.cli.data import preprocess, synth
from orchestrator.cli.model import predict, train
from orchestrator.cli.sweep import fold, plan_cmd, report, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="microau-sweep")
def main() -> None:
    """Micro-AU CLIP micro-expression AU detection as Ray Tune LOSO sweeps tracked in MLflow."""
    logs.install()  # library warnings and notes as the plain lines they are


for _cmd in (synth, preprocess, plan_cmd, fold, run, report, train, predict):
    main.add_command(_cmd)

if __name__ == "__main__":
    main()
