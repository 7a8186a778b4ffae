"""Where a flow run's tasks go: resolve the cluster from inside the run, and hand back a Dask task runner.

A deployment starts a flow run in a fresh process with ``PREFECT_API_URL`` set
and nothing else, so the cluster choice cannot live in the caller. Here a flow
resolves it itself (:mod:`cluster`: a ``ClusterSpec`` parameter, else
``DASK_SCHEDULER_ADDRESS`` or Dask's config, else a ``LocalCluster``), points
every worker at the run's Prefect API and checks versions, then runs its
training flow as a subflow on ``DaskTaskRunner(address=...)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask
from prefect import get_run_logger

from pipeline.cluster import ClusterSpec, EarlyCluster, connect, started_early
from pipeline.runtime import prefect_patches
from pipeline.runtime.interrupts import WORKER_PRELOAD
from pipeline.runtime.plugins import PrefectApiPlugin
from pipeline.runtime.prefect_api import current_api_url
from pipeline.runtime.runner import task_runner


@dataclass(frozen=True)
class Runner:
    """A task runner on the run's cluster, and how many tasks it runs at once."""

    task_runner: Any  # a DaskTaskRunner; typed loosely, as Flow.with_options wants TaskRunner[PrefectFuture]
    slots: int


@contextmanager
def _quiet_workers() -> Iterator[None]:
    """A LocalCluster's workers leave Ctrl-C to the run, which closes them (else each prints a traceback)."""
    preloads = dask.config.get("distributed.worker.preload", [])
    with dask.config.set({"distributed.worker.preload": [*preloads, *([] if WORKER_PRELOAD in preloads else [WORKER_PRELOAD])]}):
        yield


#: The modules whose tasks run on workers: a worker that imported them runs its first task at once.
FLOW_MODULES = ("pipeline.flows.train", "pipeline.flows.retrain", "pipeline.flows.score")
#: Run once on each worker of a cluster started here, after the imports (:mod:`pipeline.edge.warm`).
WORKER_WARM_UP = "pipeline.edge.warm:warm_up"


@contextmanager
def early_cluster(spec: ClusterSpec, imports: tuple[str, ...] = FLOW_MODULES) -> Iterator[EarlyCluster]:
    """Start the run's LocalCluster (if it gets one) now, in a thread, beside the Prefect API.

    See :func:`pipeline.cluster.started_early`.
    """
    with _quiet_workers(), started_early(spec, (*imports, WORKER_WARM_UP)) as early:  # the tasks' modules and Prefect
        yield early


@contextmanager
def dask_runner(spec: ClusterSpec | None = None) -> Iterator[Runner]:
    """Connect to (or start) the cluster for the current flow run; a cluster started here stops after."""
    logger = get_run_logger()
    api_url = current_api_url()
    with (
        prefect_patches.installed(),
        _quiet_workers(),
        connect(spec or ClusterSpec(), [PrefectApiPlugin(api_url)] if api_url else ()) as connection,
    ):
        workers = "worker" if connection.workers == 1 else "workers"
        logger.info("Dask scheduler: %s (%s, %d %s)", connection.address, connection.origin, connection.workers, workers)
        if connection.note:
            logger.info("%s", connection.note)
        if connection.dashboard_link:
            logger.info("Dask dashboard: %s", connection.dashboard_link)
        else:
            logger.info("Dask dashboard: not served (the scheduler needs bokeh>=3.1: pip install bokeh)")
        yield Runner(task_runner(connection), connection.threads)
