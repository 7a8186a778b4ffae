"""The Python API: train on months with Prefect on Dask, from a script or a notebook.

It checks the input and the cluster flags before anything starts, takes the
local stack of ``taxi-pipeline up`` when it is up and fits, else brings up the
run's Prefect API (unless ``PREFECT_API_URL`` names one) while the run's
LocalCluster (if it gets one) starts in a thread, and calls the
``train-trip-duration`` flow, which connects to that cluster (or resolves one itself).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cluster import ClusterSpec, check_cluster
from pipeline.core.config import TrainConfig
from pipeline.core.results import RunResult
from pipeline.edge import tracking
from pipeline.edge.reader import MonthPlan, locate_local
from pipeline.edge.sources import check_remote_months
from pipeline.flows.train import train_flow
from pipeline.runtime.interrupts import completed
from pipeline.runtime.local_stack import run_services

log = logging.getLogger(__name__)


def train(
    config: TrainConfig,
    cluster: ClusterSpec | None = None,
    *,
    plans: list[MonthPlan] | None = None,
    announce: Callable[[str], None] = log.info,
) -> RunResult:
    """Train and validate as :func:`pipeline.flows.train.train_flow`; return its result.

    ``plans`` are the months' plans when the caller has read them already
    (:func:`pipeline.edge.reader.locate_local`); else local footers are read here.
    """
    spec = cluster or ClusterSpec()
    if plans is None:
        plans = locate_local(config)
    if plans is None:  # remote: a missing bucket or month fails now, in one line, not after the API and cluster start
        check_remote_months(config.source, config.taxi, [*config.months()[0], config.months()[1]])
    if config.mlflow:
        tracking.check(config.mlflow_uri)  # a missing [mlflow] extra or tracking URI: one line, at once
    check_cluster(spec)  # bad cluster flags, address, TLS or versions fail here, before any server starts
    with run_services(spec, announce, "pipeline.flows.train") as where:
        result = train_flow(config, where, plans)
        completed()  # model and metrics are written: a Ctrl-C while the services close no longer undoes the run
    return result
