"""Estimators that cannot be trained from additive statistics, fitted fold by fold on rows.

The exact linear path never holds rows: it adds per-pair statistics. A gradient
boosted tree or a stochastic-gradient model needs the rows themselves, so each
cross-validation fold is one task that reads the month files on its worker,
fits, and returns a score. Folds are assigned with the statistics path's own
hash (:func:`pipeline.core.stats.fold_of` of the row's position in its month file),
so every model is scored on exactly the same held-out rows, however the files
are chunked. Pure: no Prefect, no Dask.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import SGDRegressor
from sklearn.pipeline import Pipeline

from pipeline.core import stats
from pipeline.edge import reader
from pipeline.core.config import MODELS
from pipeline.core.cv import CVScore
from pipeline.errors import PipelineError
from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec, encode
from pipeline.core.solve import Weights

#: Models fitted on rows, fold by fold; "linear" is the exact statistics path.
ESTIMATORS = tuple(m for m in MODELS if m != "linear")

#: Rows per read (whole row groups): a read's temporaries, not the kept rows, set the
#: peak memory of a subsampled load (1.2M rows kept 100k: +120 MB at 100k a read, +300 MB at 1M).
_READ_ROWS = 250_000
#: HistGradientBoosting takes at most 255 categories per feature: 254 zones and "other".
_MAX_BINS = 255
_OTHER = _MAX_BINS - 1
#: One-hot layout of the SGD design: [pu | do | pair | numeric].
_PU, _DO, _PAIR, _NUMERIC = 0, N_ZONES, 2 * N_ZONES, 2 * N_ZONES + N_PAIRS
#: SGD's L2 penalty as a ridge alpha on summed squared errors: 1.0 scored best on the
#: exact path at 100k and 1M rows. SGD averages its loss, so its alpha is this / rows.
_SGD_RIDGE = 1.0
#: A second splitmix64 stream, so the subsample is independent of the fold assignment.
_SAMPLE_STREAM = 0xD1B54A32D192ED03
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Rows:
    """Kept rows as arrays: zone codes, numeric features, minutes and fold ids."""

    pu: np.ndarray  # int64 pickup zone codes, 1..265
    do: np.ndarray  # int64 dropoff zone codes, 1..265
    x: np.ndarray  # float64 (n, k), the spec's numeric columns
    y: np.ndarray  # float64 duration in minutes
    fold: np.ndarray  # int64 fold ids (all 0 without cross-validation)

    @property
    def rows(self) -> int:
        return int(self.y.shape[0])

    def select(self, mask: np.ndarray) -> Rows:
        """The rows where ``mask`` holds (or at the given indices)."""
        return Rows(self.pu[mask], self.do[mask], self.x[mask], self.y[mask], self.fold[mask])


def _sample_key(position: np.ndarray, salt: int, seed: int) -> np.ndarray:
    """A uint64 hash of (salt, position, seed), like :func:`stats.fold_of` but on another stream.

    Keeping the rows with the smallest keys is a uniform sample that does not
    depend on chunking, and is unrelated to which fold a row falls in.
    """
    z = (np.uint64(salt) << np.uint64(40)) ^ position.astype(np.uint64)
    z = z + np.uint64((seed * _GOLDEN + _SAMPLE_STREAM) & _MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _concat(parts: list[Rows], k: int) -> Rows:
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return Rows(empty, empty, np.empty((0, k)), np.empty(0), empty)
    return Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("pu", "do", "x", "y", "fold")))


def load_rows(
    plans: Sequence[reader.MonthPlan],
    spec: FeatureSpec,
    folds: int,
    seed: int,
    max_rows: int | None,
    *,
    chunk_rows: int = _READ_ROWS,
) -> Rows:
    """Read and encode every month, with fold ids; at most ``max_rows`` rows, a uniform sample.

    Folds match the statistics path row for row. The sample keeps the
    ``max_rows`` rows with the smallest :func:`_sample_key`: the same subset
    (in file order) for any ``chunk_rows``. Chunks are thinned as they arrive,
    so memory stays near ``max_rows`` rows plus one chunk.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    k = len(spec.numeric)
    kept: list[Rows] = []
    keys: list[np.ndarray] = []
    threshold = np.uint64(_MASK64)  # the largest key kept so far, once max_rows are held
    for plan in plans:
        salt = stats.month_salt(plan.file.month)
        for chunk in reader.plan(plan.layout, chunk_rows):
            encoded = encode(reader.read(plan.layout, chunk), spec)
            position = chunk.offset + encoded.position
            fold = stats.fold_of(position, salt, seed, folds) if folds > 1 else np.zeros(encoded.rows, dtype=np.int64)
            pu, do = np.divmod(encoded.pair, N_ZONES)
            part = Rows(pu, do, encoded.x, encoded.y, fold)
            if max_rows is None:
                kept.append(part)
                continue
            key = _sample_key(position, salt, seed)
            below = key <= threshold
            kept.append(part.select(below))
            keys.append(key[below])
            held = sum(p.rows for p in kept)
            if held > max_rows:
                all_keys = np.concatenate(keys)
                threshold = np.partition(all_keys, max_rows - 1)[max_rows - 1]
                keep = all_keys <= threshold
                kept, keys = [_concat(kept, k).select(keep)], [all_keys[keep]]
    return _concat(kept, k)


class _ZoneCategories(TransformerMixin, BaseEstimator):
    """Columns 0 and 1 (pickup, dropoff zone) to category indices by training frequency.

    HistGradientBoosting allows at most ``max_bins`` (255) categories, and zones
    have 265 ids: the 254 most frequent zones of each column get their own
    category, the rest (and zones never seen in training) share "other".
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
            out[:, column] = lookup[X[:, column].astype(np.int64)]
        return out


class _PairOneHot(TransformerMixin, BaseEstimator):
    """Sparse one-hot ``[pu | do | pair | numeric]`` straight from the codes.

    Numeric columns are divided by their largest absolute training value, so
    every row's squared norm is at most ``3 + k`` and SGD's step stays stable
    whatever outliers the data holds (standardising lets one 100,000-mile
    ``trip_distance`` blow the weights up). :func:`sgd_weights` folds the scale back.
    """

    def fit(self, X: np.ndarray, y: Any = None) -> _PairOneHot:
        scale = np.abs(X[:, 2:]).max(axis=0, initial=0.0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        return self

    def transform(self, X: np.ndarray) -> sp.csr_matrix:
        n, k = X.shape[0], X.shape[1] - 2
        pu, do = X[:, 0].astype(np.int64), X[:, 1].astype(np.int64)
        numeric = np.broadcast_to(_NUMERIC + np.arange(k), (n, k))
        indices = np.column_stack([_PU + pu, _DO + do, _PAIR + pu * N_ZONES + do, numeric])
        data = np.column_stack([np.ones((n, 3)), X[:, 2:] / self.scale_])
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
    """Predicted minutes for ``rows``."""
    return fitted.predict(_design(rows))


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
