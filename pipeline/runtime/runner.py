"""The flow's Dask task runner: prefect-dask's, but each task's Dask key is named, not hashed from its arguments.

``PrefectDaskClient.submit`` (prefect-dask 0.3.7) leaves the key to Dask, which
tokenizes the function and every argument: the task object, its parameters and
the serialised Prefect context, pickling what it cannot hash, ~50-100 ms a submit
in the flow's process (most of its CPU in a 12-month run). The key can never
repeat anyway (each submit carries a fresh task-run id), so a readable unique
key, the task function's name and a UUID as Dask itself would print, is the
same behaviour without the hashing (prefect #18191, open: slow Dask task
creation). :meth:`KeyedDaskTaskRunner.submit` is prefect-dask's own, with
``key=`` passed, through its one private helper ``_optimize_futures`` (Prefect
futures to Dask futures, so results move worker to worker); prefect-dask is
pinned in ``pyproject.toml``. Delete when prefect-dask names its keys, or passes
``pure=False``. :func:`task_runner` builds one for a :class:`cluster.Connection`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from prefect_dask.task_runners import DaskTaskRunner, PrefectDaskFuture

from pipeline.cluster import Connection


def task_key(task: Any) -> str:
    """A Dask key for one submit of ``task``: ``chunk_stats-<32 hex digits>``, grouped by name on the dashboard."""
    return f"{getattr(task.fn, '__name__', task.name)}-{uuid4().hex}"


class KeyedDaskTaskRunner(DaskTaskRunner):
    """A ``DaskTaskRunner`` whose submits name their Dask keys (see the module docstring), and remember each key's task run
    name (``chunk-stats 2023-01 3/10``) in :attr:`run_names`: a Dask error that names a key names the task run too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_names: dict[str, str] = {}

    @property
    def name(self) -> str:
        """``dask``, as prefect-dask's: its logger stays ``prefect.task_runner.dask`` (the terminal filter's) and the UI's name."""
        return "dask"

    def submit(  # type: ignore[override]
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[Any] | None = None,
        dependencies: dict[str, set[Any]] | None = None,
    ) -> PrefectDaskFuture[Any]:
        key = task_key(task)
        if isinstance(task.task_run_name, str):
            self.run_names[key] = task.task_run_name
        future = self.client.submit(
            task,
            key=key,
            parameters=self._optimize_futures(parameters),
            wait_for=self._optimize_futures(wait_for) if wait_for else None,
            dependencies=dependencies,
            return_type="state",
        )
        return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)


def task_runner(connection: Connection) -> KeyedDaskTaskRunner:
    """A Prefect task runner that submits to ``connection`` (with its TLS security, if any)."""
    client_kwargs = {"security": connection.security} if connection.security is not None else None
    return KeyedDaskTaskRunner(address=connection.address, client_kwargs=client_kwargs)
