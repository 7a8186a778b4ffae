"""Richer feature terms, exact: what they cost beside the seed's zone one-hots, on the same rows.

The richest default linear spec of ``retrain`` (the zones, ``trip_distance:log48``,
``hour_of_week``: 216 one-hot levels counted against every pickup-dropoff pair):

- the chunk kernel, parquet to per-fold statistics (5 folds, as K-fold CV keeps them), on one core,
  over the same kernel with the seed's spec: the issue's goal for the year's flow is 1.5x;
- one CV solve (a fold at an alpha) on those statistics, over the seed's;
- scoring on one core: reading the factor levels and predicting, rows per second (goal 20M, as for
  the seed's spec).

Floors sit below what was measured, so noise on a shared machine does not fail them; the goal
and the figure are printed side by side.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.common import ALPHA, SPEC, TAXI, best_of, months
from benchmarks.conftest import QUICK_FLOORS, Bench
from pipeline.core import solve
from pipeline.core.features import FeatureSpec, factor_codes, numeric_matrix, zone_codes
from pipeline.core.model import Model
from pipeline.core.schema import DO, PU
from pipeline.edge import reader
from pipeline.edge.chunks import chunk_statistics

RICH = FeatureSpec.of("PULocationID,DOLocationID,PU_DO,trip_distance:log48,hour_of_week")
FOLDS = 5
#: The issue's goals, printed beside the figures.
GOAL_KERNEL_OVER_SEED, GOAL_SCORING_ROWS_PER_SECOND = 1.5, 20e6
#: Asserted: at most this kernel ratio, at least this scoring rate (quick mode: CI's 100k-row months, shared runners).
KERNEL_OVER_SEED, QUICK_KERNEL_OVER_SEED = 6.0, 10.0
SCORING_ROWS_PER_SECOND, QUICK_SCORING_ROWS_PER_SECOND = 5e6, 2e6


def _quick(bench: Bench) -> bool:
    return bench.floors == QUICK_FLOORS


@pytest.fixture(scope="module")
def month_plan(bench: Bench) -> reader.MonthPlan:
    (month,) = months(1)
    return reader.locate(str(bench.folder), TAXI, month, RICH.columns())


@pytest.mark.usefixtures("one_core")
def test_rich_terms_kernel_over_the_seeds(benchmark, bench, month_plan):
    """Parquet to 5-fold statistics of a whole month, the richest default spec over the seed's."""
    chunk = reader.plan(month_plan.layout, month_plan.layout.rows)[0]
    seed_seconds, seed_stats = best_of(lambda: chunk_statistics(month_plan, chunk, SPEC, FOLDS), rounds=3)
    rich_seconds, rich_packed = best_of(lambda: chunk_statistics(month_plan, chunk, RICH, FOLDS), rounds=3, benchmark=benchmark)
    seed_stats, rich_stats = seed_stats.unpack(), rich_packed.unpack()
    assert rich_stats.rows == seed_stats.rows and np.array_equal(rich_stats.count, seed_stats.count)
    ratio = rich_seconds / seed_seconds
    benchmark.extra_info.update(
        rows=chunk.rows,
        seed_seconds=seed_seconds,
        rich_seconds=rich_seconds,
        rich_over_seed=ratio,
        stats_bytes=sum(a.nbytes for a in (rich_packed.cells, rich_packed.counts, rich_stats.count, rich_stats.sum_micros)),
        headline=f"richest default spec, parquet to 5-fold statistics: {ratio:.2f}x the seed's spec (goal {GOAL_KERNEL_OVER_SEED}x)",
    )
    assert ratio <= (QUICK_KERNEL_OVER_SEED if _quick(bench) else KERNEL_OVER_SEED)


def test_rich_terms_cv_solve(benchmark, bench, month_plan):
    """One fold × alpha of K-fold CV from the statistics: the richest default spec, beside the seed's."""
    chunk = reader.plan(month_plan.layout, month_plan.layout.rows)[0]
    seed_stats, rich_stats = (chunk_statistics(month_plan, chunk, spec, FOLDS).unpack() for spec in (SPEC, RICH))
    seed_train, rich_train = seed_stats.without(0), rich_stats.without(0)
    seed_seconds, _ = best_of(lambda: solve.rmse(solve.solve(seed_train, ALPHA), seed_stats.fold(0)), rounds=3)
    rich_seconds, _ = best_of(lambda: solve.rmse(solve.solve(rich_train, 3.0), rich_stats.fold(0)), rounds=3, benchmark=benchmark)
    benchmark.extra_info.update(
        seed_seconds=seed_seconds,
        rich_seconds=rich_seconds,
        rich_over_seed=rich_seconds / seed_seconds,
        headline=f"one CV solve and score, richest default spec: {rich_seconds * 1e3:.0f} ms "
        f"({rich_seconds / seed_seconds:.1f}x the seed's)",
    )
    assert rich_seconds <= 20 * seed_seconds + 0.5


@pytest.mark.usefixtures("one_core")
def test_rich_terms_scoring_per_core(benchmark, bench, month_plan):
    """Factor levels from the decoded month, then ``predict_codes``: rows per second on one core."""
    chunk = reader.plan(month_plan.layout, month_plan.layout.rows)[0]
    model = Model(solve.solve(chunk_statistics(month_plan, chunk, RICH).unpack(), 3.0, RICH.zones), RICH)
    table = reader.read(month_plan.layout, chunk)
    pu, do, x = zone_codes(table.column(PU)), zone_codes(table.column(DO)), numeric_matrix(table, RICH.numeric)
    seconds, predicted = best_of(lambda: model.predict_codes(pu, do, x, factor_codes(table, RICH)), rounds=10, benchmark=benchmark)
    assert np.array_equal(predicted, model.predict(table)) and predicted.min() >= 1.0 and predicted.max() <= 60.0
    rate = table.num_rows / seconds
    benchmark.extra_info.update(
        rows=table.num_rows,
        rows_per_second=rate,
        headline=f"scoring with the richest default spec, one core: {rate / 1e6:.1f}M rows/s "
        f"(goal {GOAL_SCORING_ROWS_PER_SECOND / 1e6:.0f}M)",
    )
    assert rate >= (QUICK_SCORING_ROWS_PER_SECOND if _quick(bench) else SCORING_ROWS_PER_SECOND)
