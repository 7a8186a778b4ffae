"""What a run prints on the terminal: its links, choices and warnings, not every task run.

A run of a few months is hundreds of task runs. Their "Finished in state
Completed()" lines, and the tracebacks of an error the CLI prints as one line
anyway, bury the line that matters. The Prefect API keeps all of it (the UI
shows every task run's logs, tracebacks included); the terminal gets flow-level
lines, warnings, and the traceback of anything that is not a
:class:`~pipeline.errors.PipelineError` (a bug).

Prefect configures logging from ``PREFECT_LOGGING_SETTINGS_PATH`` in every
process that imports it, LocalCluster workers included (they inherit the
environment), so the filter goes there: Prefect's own file with the filter added
to its console handler. A user's own ``PREFECT_LOGGING_SETTINGS_PATH`` wins.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import PipelineError

_SETTINGS_PATH = "PREFECT_LOGGING_SETTINGS_PATH"
_FILTER = "taxi_pipeline_terminal"


class TerminalFilter(logging.Filter):
    """Keep task runs' routine lines and PipelineErrors' tracebacks off the console (the API has them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            return False  # the CLI prints its one line last
        if record.name == "prefect.task_runner.dask" and record.levelno < logging.WARNING:
            return False  # its dashboard link is printed whether or not it works; the run's own line checks first
        task_run = record.name.startswith("prefect.task_runs")
        if task_run and record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        if task_run and message.startswith("Finished in state"):
            return False  # a failure is reported by the record carrying its exception; NotReady follows from it
        return "PipelineError" not in message  # "Finished in state Failed(... PipelineError: ...)" repeats that line


def _prefect_logging_file() -> Path:
    """Prefect's default logging settings, found without importing Prefect (that would configure logging now)."""
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.submodule_search_locations, "prefect is a dependency"
    return Path(next(iter(spec.submodule_search_locations))) / "logging" / "logging.yml"


@contextmanager
def quiet_terminal() -> Iterator[None]:
    """Meanwhile, processes that load Prefect (this one, LocalCluster workers) filter their console by :class:`TerminalFilter`.

    Enter before Prefect is imported in this process.
    """
    if os.environ.get(_SETTINGS_PATH):
        yield
        return
    import yaml

    config = yaml.safe_load(_prefect_logging_file().read_text())
    config.setdefault("filters", {})[_FILTER] = {"()": f"{__name__}.TerminalFilter"}
    config["handlers"]["console"]["filters"] = [_FILTER]
    with tempfile.TemporaryDirectory(prefix="taxi-pipeline-logging-") as folder:
        path = Path(folder) / "logging.yml"
        path.write_text(yaml.safe_dump(config))
        os.environ[_SETTINGS_PATH] = str(path)
        try:
            yield
        finally:
            os.environ.pop(_SETTINGS_PATH, None)
