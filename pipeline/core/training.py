"""The steps of a training run on statistics, as plain functions the flows wrap in tasks.

Pooling months, the exact ridge fit, scoring held-out statistics, and a group
of K-fold CV folds with the candidates' refits. Small values cross between
steps (weights of about 0.5 MB, scores), never rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core import cv, solve
from pipeline.core.cv import Features
from pipeline.core.stats import Stats, combine


@dataclass(frozen=True)
class Fit:
    """Weights and training figures; ``weights`` is None when a month had no rows left."""

    weights: solve.Weights | None
    month_rows: list[int]
    rmse: float
    pair_count: np.ndarray | None = None  # training trips per pair: the baseline of drift monitoring


def fit(months: Sequence[Stats], alpha: float) -> Fit:
    """Pool the training months and solve ridge exactly.

    An empty month comes back as a value, so the flow can name it in one line.
    """
    return fit_pooled(combine(months), [m.rows for m in months], alpha)


def fit_pooled(pooled: Stats, month_rows: list[int], alpha: float) -> Fit:
    """:func:`fit` of months already added up (``month_rows``: each month's rows, to name an empty one)."""
    if 0 in month_rows:
        return Fit(None, month_rows, float("nan"))
    total = pooled.total()
    weights = solve.solve(total, alpha)
    return Fit(weights, month_rows, solve.rmse(weights, total), total.count[0])


def score(fitted: Fit, held_out: Stats) -> tuple[int, float]:
    """Rows and RMSE of the fitted model on held-out statistics."""
    if fitted.weights is None or held_out.rows == 0:
        return held_out.rows, float("nan")
    return held_out.rows, solve.rmse(fitted.weights, held_out)


@dataclass(frozen=True)
class Candidate:
    """A model refit on all training rows at one alpha (and feature set), scored on the validation month."""

    alpha: float
    fit: Fit
    val_rows: int
    val_rmse: float
    features: Features | None = None


@dataclass(frozen=True)
class FeatureSets:
    """The feature sets a CV compares, as subsets of the columns read (``read``); ``None``: no comparison."""

    read: Features
    compared: tuple[Features, ...] | None = None

    def options(self) -> list[Features | None]:
        return list(self.compared) if self.compared is not None else [None]

    def project(self, stats: Stats, features: Features | None) -> Stats:
        """``stats`` (of the ``read`` columns) as the statistics of ``features``."""
        if features is None:
            return stats
        return stats.select_numeric([self.read.index(c) for c in features])


def kfold_group(
    months: Sequence[Stats],
    val: Stats,
    folds: Sequence[int],
    alphas: Sequence[float],
    refit: Sequence[tuple[Features | None, float]],
    sets: FeatureSets | None = None,
) -> tuple[list[cv.CVScore], list[Candidate]]:
    """Some folds at every alpha (and feature set), plus the final refits of the ``refit`` (features, alpha) pairs.

    A solve takes 5 ms and a Prefect task tens of ms, so the flow cuts the
    grid into one group per worker slot rather than a task per fold × alpha,
    and the candidates' final fits are made here too, instead of in a fit and a
    score task after the choice. Every fold × alpha score is still reported.
    """
    sets = sets or FeatureSets(())
    pooled = combine(months)
    scores = []
    for features in sets.options():
        chosen = sets.project(pooled, features)
        for k in folds:
            train, test = chosen.without(k), chosen.fold(k)  # once per fold, not per alpha
            scores += [cv.score(train, test, k, alpha, features) for alpha in alphas]
    candidates, month_rows = [], [m.rows for m in months]
    for features, alpha in refit:  # from the months added up once above: projecting commutes with adding, to the bit
        fitted = fit_pooled(sets.project(pooled, features), month_rows, alpha)
        candidates.append(Candidate(alpha, fitted, *score(fitted, sets.project(val, features)), features))
    return scores, candidates


def window_scores(earlier: Sequence[Stats], month: Stats, fold: int, alphas: Sequence[float]) -> list[cv.CVScore]:
    """One rolling-origin window (train on ``earlier``, score on ``month``), at every alpha."""
    return [cv.window_score(earlier, month, fold, alpha) for alpha in alphas]


@dataclass(frozen=True)
class Outcome:
    """What a training path hands back to the flow: small, whatever the data size."""

    weights: solve.Weights | None  # None: nothing to save (no rows, or no pickle-free format)
    train_rows: int
    train_rmse: float
    val_rows: int
    val_rmse: float
    empty: tuple[str, ...] = ()  # what had no trip left after the duration filter
    pair_count: np.ndarray | None = None  # training trips per pair, when the path counted them


def empty_of(rows_by_name: dict[str, int]) -> tuple[str, ...]:
    """Names of the parts (months) with no rows."""
    return tuple(name for name, rows in rows_by_name.items() if rows == 0)
