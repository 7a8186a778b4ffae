"""The boosted challenger: ``xgboost.dask`` on all workers against single-process XGBoost, same parameters, same rows.

On the real green months committed under ``tests/data/tlc-green`` (train 2021-01,
validate 2021-02): the distributed fit must land within 0.5% of the single-process
validation RMSE (histograms are summed across workers, so the trees differ only
where the workers' quantile sketches merge differently). Reported: training rows
per second per core of each (the fit alone, reading the rows included for Dask),
which on 2 shared cores and 74k rows is a floor, not a target: each boosting
level costs an allreduce across the workers, which a small month cannot amortise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from benchmarks.conftest import QUICK_FLOORS, Bench
from pipeline.core import boosted
from pipeline.core.months import Month
from pipeline.edge import boosted_rows, reader
from pipeline.flows.boosted import train_and_validate

REAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "tlc-green"
WORKERS = 2


def _plan(month: int) -> reader.MonthPlan:
    return reader.locate(str(REAL), "green", Month(2021, month), boosted.SPEC.columns())


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """Two single-threaded worker processes: the shape of a two-machine cluster, one core each."""
    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as dask:
        yield dask


def test_xgboost_dask_vs_single_process(benchmark: pytest.FixtureRequest, bench: Bench, client: Client) -> None:
    rounds = 40 if bench.floors is QUICK_FLOORS else boosted.BoostedParams().rounds
    params = boosted.BoostedParams(rounds=rounds)
    train, val = boosted_rows.load([_plan(1)]), boosted_rows.load([_plan(2)])

    started = time.perf_counter()
    local = boosted.train_local(train.design, train.minutes, params, nthread=1)
    local_seconds = time.perf_counter() - started
    local_rmse = boosted.rmse(boosted.predict_booster(local, val.design), val.minutes)

    fit = benchmark.pedantic(train_and_validate, args=(client, [_plan(1)], _plan(2), params, 4_000_000), rounds=1, iterations=1)
    assert fit.train_rows == train.rows and fit.val_rows == val.rows
    assert abs(fit.val_rmse / local_rmse - 1) < 0.005, (fit.val_rmse, local_rmse)
    dask_per_core = fit.train_rows / fit.seconds / fit.threads
    local_per_core = train.rows / local_seconds
    benchmark.extra_info.update(
        rounds=rounds,
        train_rows=fit.train_rows,
        dask_val_rmse=fit.val_rmse,
        local_val_rmse=local_rmse,
        dask_seconds=fit.seconds,
        local_seconds=local_seconds,
        dask_rows_per_second_per_core=dask_per_core,
        local_rows_per_second_per_core=local_per_core,
        headline=(
            f"xgboost.dask {WORKERS} workers vs 1 process, {rounds} rounds on {fit.train_rows:,} real rows: val RMSE "
            f"{fit.val_rmse:.4f} vs {local_rmse:.4f}; {dask_per_core:,.0f} vs {local_per_core:,.0f} rows/s per core"
        ),
    )
