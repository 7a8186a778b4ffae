"""How a scored month compares with the training months: error against the model's own, and drift of the trip mix.

Drift is a population stability index (PSI), ``Σ (p - q) ln(p / q)``, over
pickup zones, dropoff zones and pickup-dropoff pairs, from counts the
statistics already hold. A naive PSI over the ~50k populated pairs is mostly
sampling noise at a few hundred thousand rows (about 0.9 at 400k), so bins are
formed before comparing: a pair (or zone) keeps a bin of its own only when the
scored month is expected to hold at least :data:`MIN_EXPECTED` of its trips;
the rest share one "other" bin. With ``B`` such bins the noise is about
``B / n`` ≤ ``1 / MIN_EXPECTED``, far below the usual 0.1/0.2 alarm levels,
while a real shift of the mix (say, pickup zones reshuffled) moves most of the
mass and gives a PSI of 1 or more.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.core.features import N_ZONES

#: A bin of its own needs this many expected trips in the scored month (else it joins "other").
MIN_EXPECTED = 50.0
#: Added to every bin's count on both sides, so an empty bin does not make the PSI infinite.
SMOOTHING = 0.5


def psi(expected: np.ndarray, actual: np.ndarray, min_expected: float = MIN_EXPECTED) -> float:
    """PSI of ``actual`` counts against ``expected`` counts (same bins), with rare bins pooled.

    >>> round(psi(np.array([500, 500]), np.array([500, 500])), 6)
    0.0
    """
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    total_expected, total_actual = expected.sum(), actual.sum()
    if total_expected == 0 or total_actual == 0:
        return float("nan")
    own = expected / total_expected * total_actual >= min_expected
    e = np.append(expected[own], expected[~own].sum())
    a = np.append(actual[own], actual[~own].sum())
    p = (e + SMOOTHING) / (e + SMOOTHING).sum()
    q = (a + SMOOTHING) / (a + SMOOTHING).sum()
    return float(np.sum((q - p) * np.log(q / p)))


@dataclass(frozen=True)
class MonthCounts:
    """What scoring a month accumulates: rows, the error over the rows in the training range, and trip-mix counts."""

    rows: int  # every row scored
    in_range: int  # rows the training filter keeps (duration 1..60 minutes, known zones)
    sse: float  # Σ (predicted - actual)² over in_range rows, minutes²
    error_sum: float  # Σ (predicted - actual) over in_range rows
    pair_count: np.ndarray  # (N_ZONES²,) int64 trips per pair code, in_range rows

    def __add__(self, other: MonthCounts) -> MonthCounts:
        return MonthCounts(
            self.rows + other.rows,
            self.in_range + other.in_range,
            self.sse + other.sse,
            self.error_sum + other.error_sum,
            self.pair_count + other.pair_count,
        )


def zone_counts(pair_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pickup and dropoff zone counts from pair counts."""
    grid = pair_count.reshape(N_ZONES, N_ZONES)
    return grid.sum(axis=1), grid.sum(axis=0)


@dataclass(frozen=True)
class MonthReport:
    """One scored month against the model's training figures and thresholds."""

    month: str
    rows: int
    in_range: int
    rmse: float
    mean_error: float  # predicted minus actual, minutes: positive = overestimates
    rmse_ratio: float  # rmse / the model's training RMSE
    psi_pickup: float
    psi_dropoff: float
    psi_pair: float
    breaches: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "breaches": list(self.breaches)}


def month_report(
    month: str, counts: MonthCounts, train_pair_count: np.ndarray | None, train_rmse: float, max_psi: float, max_rmse_ratio: float
) -> MonthReport:
    """A month's figures and which thresholds it breaches (a NaN figure breaches nothing)."""
    rmse = math.sqrt(counts.sse / counts.in_range) if counts.in_range else float("nan")
    mean_error = counts.error_sum / counts.in_range if counts.in_range else float("nan")
    ratio = rmse / train_rmse if train_rmse > 0 else float("nan")
    drift = (float("nan"),) * 3
    if train_pair_count is not None:
        train_pu, train_do = zone_counts(train_pair_count)
        pu, do = zone_counts(counts.pair_count)
        drift = (psi(train_pu, pu), psi(train_do, do), psi(train_pair_count, counts.pair_count))
    breaches = [f"RMSE ratio {ratio:.3f} > {max_rmse_ratio:g}"] if ratio > max_rmse_ratio else []
    for name, value in zip(("pickup", "dropoff", "pair"), drift):
        if value > max_psi:
            breaches.append(f"{name} PSI {value:.3f} > {max_psi:g}")
    return MonthReport(month, counts.rows, counts.in_range, rmse, mean_error, ratio, *drift, tuple(breaches))
