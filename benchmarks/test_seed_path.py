"""The issue's headline: the project's path against the seed's, same rows, same run.

Seed: pandas + ``to_dict`` records + DictVectorizer + LinearRegression
(:mod:`pipeline.edge.seed`). Project: statistics per month file, exact ridge at the
default alpha, RMSEs from statistics. Train one month, validate the next.
"""

from __future__ import annotations

import pytest

from benchmarks.common import ALPHA, best_of, month_path, months, project_fit
from pipeline.edge import seed

pytestmark = [pytest.mark.reference, pytest.mark.usefixtures("one_core")]


def test_project_vs_seed(benchmark, bench):
    train, val = months(2)
    seed_seconds, reference = best_of(
        lambda: seed.train_and_validate(
            seed.read_dataframe(month_path(bench.folder, train)), seed.read_dataframe(month_path(bench.folder, val))
        )
    )
    seconds, fitted = best_of(lambda: project_fit(bench.folder, [train], val), rounds=3, benchmark=benchmark)
    assert (fitted.train_rows, fitted.val_rows) == (reference.train_rows, reference.val_rows)
    rows = 2 * bench.rows
    speedup = seed_seconds / seconds
    benchmark.extra_info.update(
        rows=rows,
        alpha=ALPHA,
        rows_per_second=rows / seconds,
        seed_seconds=seed_seconds,
        seed_rows_per_second=rows / seed_seconds,
        speedup=speedup,
        val_rmse=fitted.val_rmse,
        seed_val_rmse=reference.val_rmse,
        train_rmse=fitted.train_rmse,
        seed_train_rmse=reference.train_rmse,
        headline=f"project vs the seed path in process, {rows:,} rows: {speedup:.0f}x rows/s",
    )
    assert fitted.val_rmse == pytest.approx(reference.val_rmse, rel=1e-3)
    assert speedup >= bench.floors.seed_speedup
