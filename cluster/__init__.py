"""The one door to Dask: turn user intent into a checked connection; it imports Dask and the project's errors only.

Public API: :class:`ClusterSpec` (intent), :func:`resolve` (intent -> :class:`Plan`,
starting nothing), :func:`check_cluster` (resolve, and try a running scheduler once),
:func:`connect` (a context manager yielding a checked :class:`Connection`), :func:`started_early`
(a run's LocalCluster started beside its Prefect API), :func:`start_cluster` (one that outlives runs),
:func:`parse_cluster_kwargs` (for ``--cluster-kwargs``) and :func:`check_versions`.
``python -m pipeline.cluster.certs DIR`` makes TLS files. What points Prefect at the workers (the
``DaskTaskRunner``, the worker plugin) is the runtime's: :mod:`pipeline.runtime.runner`,
:mod:`pipeline.runtime.plugins`.
"""

from pipeline.cluster.connect import Connection, EarlyCluster, check_cluster, connect, start_cluster, started_early
from pipeline.cluster.spec import ClusterSpec, Plan, parse_cluster_kwargs, resolve
from pipeline.cluster.versions import check_versions

__all__ = [
    "ClusterSpec",
    "Connection",
    "EarlyCluster",
    "Plan",
    "check_cluster",
    "check_versions",
    "connect",
    "parse_cluster_kwargs",
    "resolve",
    "start_cluster",
    "started_early",
]
