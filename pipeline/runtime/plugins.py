"""Point every Dask worker, present or future, at the flow's Prefect API.

Dask does not copy environment variables to remote workers. What Prefect does
on a worker, read from its source (3.9.1) and checked with real processes:

* Settings are read from the environment once, when ``prefect`` is imported
  (``prefect.context.GLOBAL_SETTINGS_CONTEXT``).
* Each task run carries the flow's serialised settings (``serialize_context``)
  and runs inside them, so per-call code on the worker already uses the flow's
  ``PREFECT_API_URL``.
* But the process-wide services that ship task-run events and logs
  (``EventsWorker``, ``APILogWorker``) are created on first use and keep the API
  they started with for the life of the process. A long-lived worker that
  served one run therefore sends the *next* run's task runs to the first run's
  API (silently: the new API shows a flow run without task runs).

:class:`PrefectApiPlugin`, passed to :func:`pipeline.cluster.connect` for every run,
sets ``PREFECT_API_URL`` on each worker (workers that join later get it too, as
the scheduler replays registered plugins), refreshes Prefect's global settings
if it is already imported, and stops those services when the API changed, so
that they restart on the run's API. It also makes the worker's task starts
cheaper (:func:`pipeline.runtime.prefect_patches.lean_task_starts`), and keeps
a closing worker's heartbeat race out of the run's output (:class:`ClosingHeartbeat`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.runtime.prefect_patches import lean_task_starts, point_prefect_at

PLUGIN_NAME = "taxi-pipeline-prefect-api"


#: The worker states in which a failed heartbeat is the worker's own closing, not a lost scheduler.
_CLOSING = frozenset({Status.closing, Status.closing_gracefully, Status.closed})


class ClosingHeartbeat(logging.Filter):
    """Drop "Failed to communicate with scheduler during heartbeat" and its traceback while the worker closes.

    A worker closing at the end of a run closes its connections while a heartbeat
    may be on one of them, and distributed (2026.x, ``Worker.heartbeat``) logs the
    closed stream as an error with two tracebacks, below a run that succeeded
    (also dask/distributed#5371; NVIDIA-NeMo/Curator#9). A failed heartbeat while
    the worker runs is still logged. Delete once ``Worker.heartbeat`` is quiet when
    the worker is closing.
    """

    def __init__(self, worker: Any) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        heartbeat = record.getMessage().startswith("Failed to communicate with scheduler during heartbeat")
        return not (heartbeat and self.worker.status in _CLOSING)


class PrefectApiPlugin(WorkerPlugin):
    """Set the flow's ``PREFECT_API_URL`` on every worker before it runs a task."""

    name = PLUGIN_NAME

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url

    async def setup(self, worker: Any) -> None:
        worker_logger = logging.getLogger("distributed.worker")
        if not any(isinstance(f, ClosingHeartbeat) and f.worker is worker for f in worker_logger.filters):
            worker_logger.addFilter(ClosingHeartbeat(worker))
        # Draining waits on Prefect's own loop thread: keep the worker's event loop free.
        await asyncio.to_thread(point_prefect_at, self.api_url)
        await asyncio.to_thread(lean_task_starts)

    def __repr__(self) -> str:
        return f"PrefectApiPlugin({self.api_url!r})"
