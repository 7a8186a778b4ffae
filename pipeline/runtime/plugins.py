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
cheaper (:func:`pipeline.runtime.prefect_patches.lean_task_starts`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.runtime.prefect_patches import lean_task_starts, point_prefect_at

PLUGIN_NAME = "taxi-pipeline-prefect-api"


class PrefectApiPlugin(WorkerPlugin):
    """Set the flow's ``PREFECT_API_URL`` on every worker before it runs a task."""

    name = PLUGIN_NAME

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url

    async def setup(self, worker: Any) -> None:
        # Draining waits on Prefect's own loop thread: keep the worker's event loop free.
        await asyncio.to_thread(point_prefect_at, self.api_url)
        await asyncio.to_thread(lean_task_starts)

    def __repr__(self) -> str:
        return f"PrefectApiPlugin({self.api_url!r})"
