"""Resolve where tasks run: a flag, then Dask's config, then a LocalCluster of our own.

The flow always gets ``DaskTaskRunner(address=...)``: a runner built from an
address survives Prefect's ``duplicate()`` (a live ``cluster=`` object does not),
and starting the LocalCluster here, after the Prefect API URL is exported,
lets its workers inherit that URL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dask.config
from distributed import Client, LocalCluster
from prefect_dask import DaskTaskRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSpec:
    """User intent: an address, or the size of a LocalCluster to start."""

    address: str | None = None
    n_workers: int | None = None
    threads_per_worker: int = 1
    dashboard_address: str = ":8787"


@dataclass(frozen=True)
class Connection:
    """A reachable scheduler and, when known, its dashboard."""

    address: str
    dashboard_link: str | None
    workers: int


def _scheduler_from_config() -> str | None:
    """``DASK_SCHEDULER_ADDRESS`` or ``scheduler-address`` in Dask's config files."""
    return dask.config.get("scheduler-address", None) or None


@contextmanager
def connect(spec: ClusterSpec) -> Iterator[Connection]:
    """Yield a connection for the run; a LocalCluster started here is closed after."""
    address = spec.address or _scheduler_from_config()
    if address:
        with Client(address, timeout="20s") as client:
            info = client.scheduler_info()
            yield Connection(address, client.dashboard_link, len(info.get("workers", {})))
        return
    with LocalCluster(
        n_workers=spec.n_workers,
        threads_per_worker=spec.threads_per_worker,
        processes=True,
        dashboard_address=spec.dashboard_address,
        silence_logs=logging.WARNING,
    ) as cluster:
        yield Connection(cluster.scheduler_address, cluster.dashboard_link, len(cluster.workers))


def task_runner(connection: Connection) -> DaskTaskRunner:
    """A Prefect task runner that submits to ``connection``."""
    return DaskTaskRunner(address=connection.address)
