"""The one door to Dask: turn user intent into a checked connection and a Prefect task runner.

Public API: :class:`ClusterSpec` (intent), :func:`resolve` (intent -> :class:`Plan`,
starting nothing), :func:`check_cluster` (resolve, and try a running scheduler once),
:func:`connect` (a context manager yielding a checked :class:`Connection`), :func:`started_early`
(a run's LocalCluster started beside its Prefect API), :func:`start_cluster` (one that outlives runs), :func:`task_runner`
(a ``DaskTaskRunner`` for that connection), :func:`parse_cluster_kwargs`
(for ``--cluster-kwargs``), :class:`PrefectApiPlugin` (points workers at the flow's
Prefect API) and :func:`check_versions`. ``python -m cluster.certs DIR`` makes TLS files.
"""

from cluster.connect import Connection, EarlyCluster, check_cluster, connect, start_cluster, started_early, task_runner
from cluster.plugins import PrefectApiPlugin
from cluster.spec import ClusterSpec, Plan, parse_cluster_kwargs, resolve
from cluster.versions import check_versions

__all__ = [
    "ClusterSpec",
    "Connection",
    "EarlyCluster",
    "Plan",
    "PrefectApiPlugin",
    "check_cluster",
    "check_versions",
    "connect",
    "parse_cluster_kwargs",
    "resolve",
    "start_cluster",
    "started_early",
    "task_runner",
]
