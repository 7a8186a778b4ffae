"""Estimators that cannot be trained from additive statistics, fitted fold by fold on rows.

The exact linear path never holds rows: it adds per-pair statistics. A gradient
boosted tree or a stochastic-gradient model needs the rows themselves, so each
cross-validation fold is one task that gathers rows on its worker
(:func:`pipeline.edge.chunks.load_rows`), fits, and returns a score. Folds are
assigned with the statistics path's own hash (:func:`pipeline.core.hashing.fold_of`
of the row's position in its month file), so every model is scored on exactly
the same held-out rows, however the files are chunked. Pure: no I/O, no Prefect, no Dask.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import SGDRegressor
from sklearn.pipeline import Pipeline

from pipeline.core.cv import CVScore
from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec, clip_to_window
from pipeline.core.rows import Rows
from pipeline.core.solve import Weights
from pipeline.errors import PipelineError

#: Models fitted on rows, fold by fold; "linear" is the exact statistics path.
ESTIMATORS = ("hist_gradient_boosting", "sgd")

#: HistGradientBoosting takes at most 255 categories per feature: 254 zones and "other".
_MAX_BINS = 255
_OTHER = _MAX_BINS - 1
#: One-hot layout of the SGD design: [pu | do | pair | numeric].
_PU, _DO, _PAIR, _NUMERIC = 0, N_ZONES, 2 * N_ZONES, 2 * N_ZONES + N_PAIRS
#: SGD's L2 penalty as a ridge alpha on summed squared errors: 1.0 scored best on the
#: exact path at 100k and 1M rows. SGD averages its loss, so its alpha is this / rows.
_SGD_RIDGE = 1.0


def _known_zones(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zone codes as int64 indices (0 where unknown) and whether each is a zone id, 1..265; NaN is unknown."""
    known = (codes >= 1) & (codes < N_ZONES)
    return np.where(known, codes, 0).astype(np.int64), known


class _ZoneCategories(TransformerMixin, BaseEstimator):
    """Columns 0 and 1 (pickup, dropoff zone) to category indices by training frequency.

    HistGradientBoosting allows at most ``max_bins`` (255) categories, and zones
    have 265 ids: the 254 most frequent zones of each column get their own
    category, the rest (and zones never seen in training) share "other". So do
    codes that are no zone at all (-1 for null, 0, 300, NaN) when predicting:
    indexing the lookup with -1 would silently take zone 265's category.
    """

    def fit(self, X: np.ndarray, y: Any = None) -> _ZoneCategories:
        self.lookup_ = []
        for column in (0, 1):
            counts = np.bincount(X[:, column].astype(np.int64), minlength=N_ZONES)
            order = np.argsort(-counts, kind="stable")[:_OTHER]
            order = order[counts[order] > 0]
            lookup = np.full(N_ZONES, _OTHER, dtype=np.float64)
            lookup[order] = np.arange(order.size)
            self.lookup_.append(lookup)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        out = np.array(X, dtype=np.float64, copy=True)
        for column, lookup in enumerate(self.lookup_):
            zone, known = _known_zones(out[:, column])
            out[:, column] = np.where(known, lookup[zone], _OTHER)
        return out


class _PairOneHot(TransformerMixin, BaseEstimator):
    """Sparse one-hot ``[pu | do | pair | numeric]`` straight from the codes.

    Numeric columns are divided by their largest absolute training value, so
    every row's squared norm is at most ``3 + k`` and SGD's step stays stable
    whatever outliers the data holds (standardising lets one 100,000-mile
    ``trip_distance`` blow the weights up). :func:`sgd_weights` folds the scale back.
    A code that is no zone (-1: unknown) adds nothing, as in :meth:`pipeline.core.model.Model.predict_codes`.
    """

    def fit(self, X: np.ndarray, y: Any = None) -> _PairOneHot:
        scale = np.abs(X[:, 2:]).max(axis=0, initial=0.0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        return self

    def transform(self, X: np.ndarray) -> sp.csr_matrix:
        n, k = X.shape[0], X.shape[1] - 2
        (pu, pu_known), (do, do_known) = _known_zones(X[:, 0]), _known_zones(X[:, 1])
        numeric = np.broadcast_to(_NUMERIC + np.arange(k), (n, k))
        indices = np.column_stack([_PU + pu, _DO + do, _PAIR + pu * N_ZONES + do, numeric])
        ones = np.column_stack([pu_known, do_known, pu_known & do_known]).astype(np.float64)
        data = np.column_stack([ones, X[:, 2:] / self.scale_])
        indptr = np.arange(0, n * (3 + k) + 1, 3 + k)
        return sp.csr_matrix((data.ravel(), indices.ravel(), indptr), shape=(n, _NUMERIC + k))


def make_estimator(name: str, seed: int) -> Pipeline:
    """A fresh scikit-learn pipeline taking :func:`_design` columns ``[pu, do, numeric...]``."""
    if name == "hist_gradient_boosting":
        model = HistGradientBoostingRegressor(
            learning_rate=0.1,
            max_iter=200,
            max_bins=_MAX_BINS,
            categorical_features=[0, 1],
            early_stopping=False,
            random_state=seed,
        )
        return Pipeline([("zones", _ZoneCategories()), ("model", model)])
    if name == "sgd":
        # alpha suits 100k rows; fit() sets it to _SGD_RIDGE / rows. "adaptive" holds eta0
        # while the loss improves, then divides it by 5: converges to the exact ridge
        # solution in 60-100 epochs, where "invscaling" has not after 100 and "optimal"
        # diverges on minutes. Stable while eta0 * (3 + k) < 2 (see _PairOneHot).
        model = SGDRegressor(
            alpha=_SGD_RIDGE / 100_000,
            learning_rate="adaptive",
            eta0=0.05,
            max_iter=1000,
            tol=1e-3,
            n_iter_no_change=3,
            random_state=seed,
        )
        return Pipeline([("onehot", _PairOneHot()), ("model", model)])
    raise PipelineError(f"--model {name!r}: expected one of {', '.join(ESTIMATORS)}")


def _design(rows: Rows) -> np.ndarray:
    """Dense ``[pu, do, numeric...]`` float columns, the input of every pipeline."""
    return np.column_stack([rows.pu, rows.do, rows.x]).astype(np.float64)


def fit(name: str, rows: Rows, seed: int) -> Pipeline:
    """Fit estimator ``name`` on ``rows``; deterministic for a given seed.

    SGD's penalty is set per row count, so it is the same ridge penalty
    (``_SGD_RIDGE``) however many rows a fold trains on.
    """
    estimator = make_estimator(name, seed)
    if name == "sgd":
        estimator.set_params(model__alpha=_SGD_RIDGE / max(rows.rows, 1))
    return estimator.fit(_design(rows), rows.y)


def predict(fitted: Pipeline, rows: Rows) -> np.ndarray:
    """Predicted minutes for ``rows``, clipped to the training window as every model's predictions are."""
    return clip_to_window(np.asarray(fitted.predict(_design(rows)), dtype=np.float64), FeatureSpec())


def rmse(fitted: Pipeline, rows: Rows) -> float:
    """Root mean squared error in minutes on ``rows``."""
    return float(np.sqrt(np.mean((predict(fitted, rows) - rows.y) ** 2)))


def fold_score(name: str, rows: Rows, fold: int, seed: int) -> CVScore:
    """Fit on every fold but ``fold`` and score on ``fold``."""
    started = time.perf_counter()
    held = rows.fold == fold
    train, test = rows.select(~held), rows.select(held)
    if train.rows == 0 or test.rows == 0:
        raise PipelineError(f"fold {fold}: {train.rows} training and {test.rows} held-out rows; too few rows for this many folds")
    score = rmse(fit(name, train, seed), test)
    return CVScore(fold, None, score, train.rows, test.rows, time.perf_counter() - started)


def sgd_weights(fitted: Pipeline) -> Weights:
    """A fitted ``sgd`` pipeline as linear :class:`~pipeline.core.solve.Weights`, to save as a :class:`~pipeline.core.model.Model`.

    The numeric columns' scaling is folded into their weights.
    """
    onehot, model = fitted.named_steps.get("onehot"), fitted.named_steps["model"]
    if not isinstance(onehot, _PairOneHot) or not isinstance(model, SGDRegressor):
        raise PipelineError("sgd_weights: not a fitted 'sgd' model")
    coef = model.coef_
    pu, do, pair = (coef[a:b].copy() for a, b in ((_PU, _DO), (_DO, _PAIR), (_PAIR, _NUMERIC)))
    return Weights(float(model.intercept_[0]), pu, do, pair, coef[_NUMERIC:] / onehot.scale_)
