"""``taxi-pipeline``: parse flags, call the Python API, print a table. Nothing else.

Bad input or flags end in one line on stderr and exit code 2; Prefect and Dask
load only once a run starts, so ``--help`` and bad flags answer at once.
"""

from __future__ import annotations

import sys

import click

from pipeline.cli import cache, models, score, stack, train  # noqa: F401  (they register their commands)
from pipeline.cli.common import cli, err
from pipeline.errors import PipelineError
from pipeline.runtime import stack_record
from pipeline.runtime.interrupts import EXIT_CODE, Interrupted, interruptible
from pipeline.runtime.terminal_logs import quiet_terminal

__all__ = ["cli", "main"]


def main(relay: bool = True) -> None:
    """Entry point: one line on stderr and exit code 2 for bad input or flags, 130 for Ctrl-C.

    A run goes to the local stack's relay when one is up and fits (``taxi-pipeline up``);
    the relay's own processes run it here (``relay=False``).
    """
    relayed = stack_record.relay(sys.argv[1:]) if relay else None
    if relayed is not None:
        sys.exit(relayed)
    try:
        with quiet_terminal(), interruptible(say=_say):
            cli.main(standalone_mode=False)
    except (PipelineError, click.UsageError) as exc:
        message = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
        _say(f"error: {message}")
        sys.exit(2)
    except (Interrupted, click.exceptions.Abort):
        _say("interrupted: the run was stopped (Ctrl-C)")
        sys.exit(EXIT_CODE)


def _say(line: str) -> None:
    err.print(line, highlight=False, markup=False, soft_wrap=True)
