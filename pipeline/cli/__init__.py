"""``taxi-pipeline``: parse flags, call the Python API, print a table. Nothing else.

Bad input or flags end in one line on stderr and exit code 2; Prefect and Dask
load only once a run starts, so ``--help`` and bad flags answer at once.
"""

from __future__ import annotations

import logging
import sys

import click

from pipeline.cli import cache, models, score, train  # noqa: F401  (they register their commands)
from pipeline.cli.common import cli, err
from pipeline.errors import PipelineError

__all__ = ["cli", "main"]


class _NoTracebackForBadInput(logging.Filter):
    """Prefect logs a failed run with its traceback; for bad input the message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info = None
        return True


def main() -> None:
    """Entry point: one line on stderr and exit code 2 for bad input or flags."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_NoTracebackForBadInput())
    try:
        cli.main(standalone_mode=False)
    except (PipelineError, click.UsageError) as exc:
        message = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
        err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
