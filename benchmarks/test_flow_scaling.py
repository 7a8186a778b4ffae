"""The whole product: ``pipeline.run.train`` on a LocalCluster, reporting to one Prefect API.

Train on 1, 2 and 4 months and validate on the next, so scaling with work shows;
then 1 worker against 2 on the largest. Everything else is ``TrainConfig``'s
defaults, i.e. what ``taxi-pipeline train`` runs (K-fold CV included), but for the
chunk cache: off, so every run reads and encodes its months.
``seconds`` is the flow's own time (from its start to metrics written, as in
``metrics.json``); the benchmark's time also holds the cluster's start (~4 s).
One round each: a run is slow, and the comparisons are between the runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import best_of, months, project_fit
from pipeline.cluster import ClusterSpec
from pipeline.core.config import TrainConfig
from pipeline.run import train

pytestmark = pytest.mark.slow

TRAIN_MONTHS = (1, 2, 4)


def _train(folder: Path, train_months: int, workers: int, output: Path) -> dict[str, Any]:
    *fit_on, val = months(train_months + 1)
    config = TrainConfig(source=str(folder), train_months=[str(m) for m in fit_on], val_month=str(val), output=output, cache=False)
    return train(config, ClusterSpec(n_workers=workers, dashboard_address=":0")).to_dict()


def _figures(metrics: dict[str, Any], rows: int) -> dict[str, float]:
    return {"seconds": metrics["seconds"], "rows_per_second": rows / metrics["seconds"]}


@pytest.mark.parametrize("train_months", TRAIN_MONTHS)
def test_flow_scales_with_months(benchmark, bench, prefect_api_url, tmp_path, train_months):
    _, metrics = best_of(lambda: _train(bench.folder, train_months, 2, tmp_path), benchmark=benchmark)
    *fit_on, val = months(train_months + 1)
    in_process = project_fit(bench.folder, fit_on, val)
    assert (metrics["train_rows"], metrics["val_rows"]) == (in_process.train_rows, in_process.val_rows)
    assert metrics["val_rmse"] == pytest.approx(in_process.val_rmse, rel=1e-9)
    rows = (train_months + 1) * bench.rows
    benchmark.extra_info.update(train_months=train_months, workers=2, rows=rows, val_rmse=metrics["val_rmse"], **_figures(metrics, rows))


def test_flow_two_workers_vs_one(benchmark, bench, prefect_api_url, tmp_path):
    train_months = max(TRAIN_MONTHS)
    rows = (train_months + 1) * bench.rows
    one = _train(bench.folder, train_months, 1, tmp_path / "one")
    _, two = best_of(lambda: _train(bench.folder, train_months, 2, tmp_path / "two"), benchmark=benchmark)
    assert one["val_rmse"] == two["val_rmse"]
    speedup = one["seconds"] / two["seconds"]
    benchmark.extra_info.update(
        train_months=train_months,
        rows=rows,
        one_worker=_figures(one, rows),
        two_workers=_figures(two, rows),
        speedup=speedup,
    )
    assert speedup >= bench.floors.worker_speedup
