"""The flow's task runner names each task's Dask key instead of hashing its arguments, and behaves as prefect-dask's otherwise."""

from __future__ import annotations

import distributed.client
import pytest
from distributed import LocalCluster
from prefect import flow, task

from pipeline.cluster import Connection
from pipeline.runtime.runner import KeyedDaskTaskRunner, task_key, task_runner


@task
def double(x: int) -> int:
    return 2 * x


def test_keys_are_named_by_the_task_function_and_never_repeat():
    keys = {task_key(double) for _ in range(1000)}
    assert len(keys) == 1000
    assert all(k.startswith("double-") and len(k) == len("double-") + 32 for k in keys)


@pytest.mark.slow
@pytest.mark.cluster
def test_a_flow_runs_without_dask_hashing_its_arguments(prefect_api_url, monkeypatch):
    def no_hashing(*args, **kwargs):
        raise AssertionError("Client.submit tokenized a task's arguments")

    monkeypatch.setattr(distributed.client, "tokenize", no_hashing)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        runner = task_runner(Connection(cluster.scheduler_address, None, 1, 2))
        assert type(runner) is type(runner.duplicate()) is KeyedDaskTaskRunner  # what each worker rebuilds
        assert runner.name == "dask" and runner.logger.name == "prefect.task_runner.dask"  # prefect-dask's, for logs and the UI

        @flow(task_runner=runner)
        def doubles(n: int) -> tuple[list[int], list[str]]:
            futures = [double.submit(i) for i in range(n)]
            total = double.submit(futures[-1])  # a future as a parameter: Dask resolves it on the worker
            return [f.result() for f in futures] + [total.result()], [f.wrapped_future.key for f in futures]

        values, keys = doubles(5)
    assert values == [0, 2, 4, 6, 8, 16]
    assert len(set(keys)) == 5 and all(k.startswith("double-") for k in keys)
