"""Drift and error figures of a scored month: no false alarms from sampling noise, a real shift caught."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.features import N_ZONES
from pipeline.core.monitoring import MonthCounts, month_report, psi, zone_counts
from pipeline.core.months import Month
from pipeline.edge.synth import synth_month


def _pair_counts(month: Month, rows: int, seed: int, shuffle_pickups: bool = False) -> np.ndarray:
    table = synth_month(month, rows, seed=seed)
    pu = table["PULocationID"].to_numpy(zero_copy_only=False).astype(np.int64)
    do = table["DOLocationID"].to_numpy(zero_copy_only=False).astype(np.int64)
    if shuffle_pickups:
        pu = np.random.default_rng(1).permutation(N_ZONES)[pu]
    return np.bincount(pu * N_ZONES + do, minlength=N_ZONES * N_ZONES)


@pytest.fixture(scope="module")
def training() -> np.ndarray:
    """Two months of 500k generated trips: the training mix."""
    return _pair_counts(Month(2023, 1), 500_000, seed=0) + _pair_counts(Month(2023, 2), 500_000, seed=0)


def _counts(pairs: np.ndarray) -> MonthCounts:
    rows = int(pairs.sum())
    return MonthCounts(rows, rows, 25.0 * rows, 0.5 * rows, pairs)  # RMSE 5, mean error +0.5


@pytest.mark.parametrize("rows", [50_000, 400_000])
def test_a_month_from_the_same_city_raises_no_alarm(training, rows):
    scored = _pair_counts(Month(2023, 3), rows, seed=7)  # another draw, another month
    naive = psi(training, scored, min_expected=0)
    report = month_report("2023-03", _counts(scored), training, train_rmse=5.0, max_psi=0.2, max_rmse_ratio=1.5)
    assert naive > (0.2 if rows == 50_000 else 0.05)  # comparing every populated pair cries wolf, more so on smaller months
    assert max(report.psi_pickup, report.psi_dropoff, report.psi_pair) < 0.05
    assert report.breaches == ()
    assert report.rmse == pytest.approx(5.0) and report.mean_error == pytest.approx(0.5) and report.rmse_ratio == pytest.approx(1.0)


def test_reshuffled_pickup_zones_breach(training):
    scored = _pair_counts(Month(2023, 3), 400_000, seed=7, shuffle_pickups=True)
    report = month_report("2023-03", _counts(scored), training, train_rmse=5.0, max_psi=0.2, max_rmse_ratio=1.5)
    assert report.psi_pickup > 1.0 and report.psi_pair > 1.0
    assert report.psi_dropoff < 0.05  # the dropoff mix did not move
    assert [b.split(" PSI")[0] for b in report.breaches] == ["pickup", "pair"]


def test_an_error_above_the_ratio_breaches_and_nan_figures_breach_nothing(training):
    counts = MonthCounts(100, 100, 100 * 64.0, 0.0, np.zeros(N_ZONES * N_ZONES, dtype=np.int64))
    counts = MonthCounts(100, 100, counts.sse, 0.0, training // 10_000)
    report = month_report("2023-05", counts, None, train_rmse=5.0, max_psi=0.2, max_rmse_ratio=1.5)
    assert report.rmse == pytest.approx(8.0) and report.breaches == ("RMSE ratio 1.600 > 1.5",)
    assert np.isnan(report.psi_pair)  # no training counts: drift not measured, not an alarm


def test_psi_is_zero_for_identical_mixes_and_pickup_dropoff_counts_add_up(training):
    assert psi(training, training) == pytest.approx(0.0, abs=1e-12)
    pu, do = zone_counts(training)
    assert pu.sum() == do.sum() == training.sum()
