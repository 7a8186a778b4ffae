"""The steps of a training run on statistics, as plain functions the flows wrap in tasks.

Pooling months, the exact ridge fit, scoring held-out statistics, and a group
of K-fold CV folds with the candidates' refits. Small values cross between
steps (weights of about 0.5 MB, scores), never rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from pipeline.core import cv, solve
from pipeline.core.cv import Features
from pipeline.core.features import FeatureSpec
from pipeline.core.stats import Part, Stats, combine
from pipeline.core.terms import ZONE_TERMS


@dataclass(frozen=True)
class Fit:
    """Weights and training figures; ``weights`` is None when a month had no rows left."""

    weights: solve.Weights | None
    month_rows: list[int]
    rmse: float
    pair_count: np.ndarray | None = None  # training trips per pair: the baseline of drift monitoring


def fit(months: Sequence[Part], alpha: float, zones: Sequence[str] = ZONE_TERMS) -> Fit:
    """Pool the training months and solve ridge exactly, with the zone terms ``zones``.

    An empty month comes back as a value, so the flow can name it in one line.
    """
    return fit_pooled(combine(months), [m.rows for m in months], alpha, zones)


def fit_pooled(pooled: Stats | solve.Prepared, month_rows: list[int], alpha: float, zones: Sequence[str] = ZONE_TERMS) -> Fit:
    """:func:`fit` of months already added up (``month_rows``: each month's rows, to name an empty one)."""
    if 0 in month_rows:
        return Fit(None, month_rows, float("nan"))
    total = solve.prepared(pooled.total())
    weights = solve.solve(total, alpha, zones)
    return Fit(weights, month_rows, solve.rmse(weights, total), total.stats.count[0])


def score(fitted: Fit, held_out: Stats | solve.Prepared) -> tuple[int, float]:
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
    """The feature sets (term lists) a CV compares, as subsets of the terms read (``read``); ``None``: no comparison."""

    read: FeatureSpec
    compared: tuple[Features, ...] | None = None

    def options(self) -> list[Features | None]:
        return list(self.compared) if self.compared is not None else [None]

    def spec(self, features: Features | None) -> FeatureSpec:
        """The spec of a feature set (``None``: every term read)."""
        return self.read if features is None else FeatureSpec.of(features, self.read.min_minutes, self.read.max_minutes)

    def zones(self, features: Features | None) -> tuple[str, ...]:
        return self.spec(features).zones

    @overload
    def project(self, stats: Stats, features: Features | None) -> Stats: ...
    @overload
    def project(self, stats: Part, features: Features | None) -> Part: ...
    def project(self, stats: Part, features: Features | None) -> Part:
        """``stats`` (of the ``read`` terms) as the statistics of ``features``: its numeric columns and factor levels."""
        if features is None:
            return stats
        return project(stats, self.read, self.spec(features))


def kfold_group(
    pooled: Part,
    month_rows: Sequence[int],
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
    sets = sets or FeatureSets(FeatureSpec())
    scores: list[cv.CVScore] = []
    wholes: dict[Features | None, Stats] = {}  # each feature set's folds pooled
    for features in sets.options():
        chosen, zones = sets.project(pooled, features), sets.zones(features)
        whole = wholes[features] = chosen.total()
        # once per fold, not per alpha: the selections, and their counts per level and pair as floats
        for k, train, test in solve.prepared_folds(chosen, whole, folds):
            scores += [cv.score(train, test, k, alpha, features, zones) for alpha in alphas]
    candidates = []
    # a feature set's refits at several alphas convert its training and validation statistics once (one set at a
    # time: refits come grouped by feature set)
    prepared: dict[Features | None, tuple[solve.Prepared, solve.Prepared]] = {}
    for features, alpha in refit:  # from the months added up once: projecting commutes with adding, to the bit
        if features not in prepared:
            prepared = {features: (solve.Prepared.of(wholes[features]), solve.Prepared.held_out(sets.project(val, features).total()))}
        training_rows, held_out = prepared[features]
        fitted = fit_pooled(training_rows, list(month_rows), alpha, sets.zones(features))
        candidates.append(Candidate(alpha, fitted, *score(fitted, held_out), features))
    return scores, candidates


def share_refits(
    fold_groups: Sequence[Sequence[int]], alphas: int, refits: Sequence[tuple[Features | None, float]]
) -> list[list[tuple[Features | None, float]]]:
    """The refits spread over the CV groups so their work evens out: each in turn to the group with the least so far.

    A fold costs a solve per alpha (and feature set, as a refit does), so with 5 folds in 2 groups the group of 2
    folds takes every refit of 4 alphas (12 solves each) instead of half (14 against 10): the CV's wall time is its
    slowest group's.
    """
    work = [len(folds) * alphas * len({features for features, _ in refits}) for folds in fold_groups]
    shares: list[list[tuple[Features | None, float]]] = [[] for _ in fold_groups]
    for refit in refits:
        least = min(range(len(work)), key=work.__getitem__)
        shares[least].append(refit)
        work[least] += 1
    return shares


def window_scores(
    earlier: Sequence[Part], month: Stats, fold: int, alphas: Sequence[float], zones: Sequence[str] = ZONE_TERMS
) -> list[cv.CVScore]:
    """One rolling-origin window (train on ``earlier``, score on ``month``), at every alpha."""
    return [cv.window_score(earlier, month, fold, alpha, zones) for alpha in alphas]


@overload
def project(stats: Stats, read: FeatureSpec, spec: FeatureSpec) -> Stats: ...
@overload
def project(stats: Part, read: FeatureSpec, spec: FeatureSpec) -> Part: ...
def project(stats: Part, read: FeatureSpec, spec: FeatureSpec) -> Part:
    """Statistics of the terms ``read`` as those of ``spec``, a subset: its numeric columns and its factors' levels
    (packed ones stay packed when ``spec`` is every term read)."""
    missing = [t for t in spec.terms if t not in read.terms]
    if missing:
        raise ValueError(f"terms {missing} were not read")
    starts = dict(zip((f.name for f in read.factors), read.offsets()))
    levels = [level for f in spec.factors for level in range(starts[f.name], starts[f.name] + f.levels)]
    return stats.select([read.numeric.index(c) for c in spec.numeric], levels)


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
