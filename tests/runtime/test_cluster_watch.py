"""The cluster watch's grace; its behaviour on real processes is in tests/cluster/test_cluster_faults.py."""

from __future__ import annotations

import dask

from pipeline.runtime.cluster_watch import NO_WORKERS_GRACE, no_workers_grace


def test_the_grace_without_workers_is_dasks_no_workers_timeout_else_a_minute():
    assert NO_WORKERS_GRACE == 60
    with dask.config.set({"distributed.scheduler.no-workers-timeout": None}):
        assert no_workers_grace() == 60
    with dask.config.set({"distributed.scheduler.no-workers-timeout": "2m"}):
        assert no_workers_grace() == 120
