"""The one door to Dask: turn user intent into a scheduler address and a task runner."""

from cluster.connect import ClusterSpec, Connection, connect, task_runner

__all__ = ["ClusterSpec", "Connection", "connect", "task_runner"]
