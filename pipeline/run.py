"""The Python API: run a flow on a Dask cluster, reporting to one Prefect API.

Order matters: the Prefect API comes up (or is found) first and its URL is
exported, then the cluster starts, so LocalCluster workers inherit the URL and
report their task runs to the flow's API instead of starting servers of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cluster import ClusterSpec, check_cluster, connect, task_runner
from pipeline.core.config import TrainConfig
from pipeline.flows.train import train_flow
from pipeline.orchestration.prefect_api import prefect_api
from pipeline.edge.reader import preflight

log = logging.getLogger(__name__)


def train(
    config: TrainConfig,
    cluster: ClusterSpec | None = None,
    announce: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Train and validate as :func:`pipeline.flows.train_flow`; return its metrics."""
    spec = cluster or ClusterSpec()
    preflight(config)
    check_cluster(spec)  # bad cluster flags, address, TLS or versions fail here, before any server starts
    with prefect_api() as api_url, connect(spec, prefect_api_url=api_url) as connection:
        announce(f"Prefect API: {api_url}")
        announce(f"Dask scheduler: {connection.address} ({connection.origin}, {connection.workers} workers)")
        if connection.note:
            announce(connection.note)
        if connection.dashboard_link:
            announce(f"Dask dashboard: {connection.dashboard_link}")
        return train_flow.with_options(task_runner=task_runner(connection))(config)
