"""The one way a `microau-sweep` command fails: a `MicroAUError` (whose message says what is wrong and
what to do) becomes click's `Error: ...` on stderr and exit status 1, without a traceback."""
from __future__ import annotations

import contextlib

import click

from preprocessing.errors import MicroAUError


@contextlib.contextmanager
def friendly_errors():
    try:
        yield
    except MicroAUError as e:
        raise click.ClickException(str(e)) from None
