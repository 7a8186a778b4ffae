"""K-fold CV over an alpha grid: from one pass of per-fold statistics, against refitting.

From statistics (the product's way, :mod:`pipeline.core.cv`): one pass of the
``chunk-stats`` task with fold ids gives per-fold statistics; fold k trains on
``total - fold_k`` and is scored on ``fold_k``, for every alpha, without
touching a row again. Refitting, as a generic grid search does: every (fold,
alpha) fit passes over the month again, builds its training statistics from the
rows outside the fold, and scores the held-out rows by prediction. Both use the
same solver, so every fold's RMSE agrees to rounding; scoring by prediction
also checks the product's SSE identity independently.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import CHUNK_ROWS, SPEC, best_of, month_path, month_stats, months
from pipeline.core import cv, hashing, solve, stats
from pipeline.core.features import Encoded, encode
from pipeline.core.months import Month
from pipeline.edge import reader

pytestmark = pytest.mark.usefixtures("one_core")

FOLDS = 5
ALPHAS = (1e-3, 1e-1, 1.0, 10.0, 100.0)
#: The ``chunk-stats`` task's default fold seed.
SEED = 0


def cv_from_statistics(folder: Path, month: Month) -> np.ndarray:
    """RMSE per (alpha, fold) from one pass of per-fold statistics."""
    per_fold = month_stats(folder, month, FOLDS)
    return np.array([[cv.kfold_score(per_fold, k, alpha).rmse for k in range(FOLDS)] for alpha in ALPHAS])


def _pass(folder: Path, month: Month) -> Iterator[tuple[Encoded, np.ndarray]]:
    """One pass over the month: each chunk's kept rows and their folds, assigned as the flow assigns them."""
    layout = reader.inspect(month_path(folder, month), SPEC.columns())
    for chunk in reader.plan(layout, CHUNK_ROWS):
        encoded = encode(reader.read(layout, chunk), SPEC)
        yield encoded, hashing.fold_of(chunk.offset + encoded.position, hashing.month_salt(month), SEED, FOLDS)


def _rows(encoded: Encoded, mask: np.ndarray) -> Encoded:
    """The rows of ``encoded`` where ``mask`` holds (the chunk's counts of rows read stay whole)."""
    return Encoded(encoded.pair[mask], encoded.micros[mask], encoded.x[mask], encoded.position[mask], encoded.screened)


def cv_by_refitting(folder: Path, month: Month) -> np.ndarray:
    """RMSE per (alpha, fold) from a pass over the rows for every fit."""
    rmse = np.empty((len(ALPHAS), FOLDS))
    for k in range(FOLDS):
        for i, alpha in enumerate(ALPHAS):
            fit_on, pairs, ys = stats.empty(), [], []
            for encoded, fold in _pass(folder, month):
                fit_on = fit_on + stats.compute(_rows(encoded, fold != k))
                pairs.append(encoded.pair[fold == k])
                ys.append(encoded.y[fold == k])
            predicted = solve.solve(fit_on, alpha).pair_prediction()[np.concatenate(pairs)]
            rmse[i, k] = np.sqrt(np.mean((predicted - np.concatenate(ys)) ** 2))
    return rmse


def test_cv_from_statistics_vs_refitting(benchmark, bench):
    (month,) = months(1)
    seconds, from_stats = best_of(lambda: cv_from_statistics(bench.folder, month), rounds=3, benchmark=benchmark)
    refit_seconds, refitted = best_of(lambda: cv_by_refitting(bench.folder, month))
    np.testing.assert_allclose(from_stats, refitted, rtol=1e-9)
    mean_rmse = from_stats.mean(axis=1)
    speedup = refit_seconds / seconds
    benchmark.extra_info.update(
        rows=bench.rows,
        folds=FOLDS,
        alphas=list(ALPHAS),
        rows_per_second=bench.rows / seconds,
        refit_seconds=refit_seconds,
        speedup=speedup,
        cv_rmse=mean_rmse.tolist(),
        best_alpha=ALPHAS[int(np.argmin(mean_rmse))],
        headline=f"{FOLDS}-fold CV x {len(ALPHAS)} alphas from statistics vs refitting: {speedup:.1f}x",
    )
    assert speedup >= bench.floors.cv_speedup
