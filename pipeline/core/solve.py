"""Exact ridge regression from :class:`~pipeline.core.stats.Stats`, by a Schur complement.

Unknowns: an intercept (not penalised, as scikit-learn's ``fit_intercept``), one
weight per pickup zone, per dropoff zone, per numeric column (the *dense* block,
533 + k unknowns) and one per pickup-dropoff pair (the *pair* block, 70k
unknowns). Every row has exactly one pair, so the pair block of ``XᵀX + αI`` is
diagonal: eliminating it leaves a dense (533 + k)² system, solved directly.
With ``q = α / (n_p + α)`` the one-hot part of the Schur complement is formed
as ``Σ n_p q_p u_p u_pᵀ`` rather than as a difference of large numbers, so a
small alpha loses no precision. As alpha goes to 0 the solution tends to the
minimum-norm least-squares one, which is what ``LinearRegression`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.features import N_ZONES
from pipeline.core.stats import Stats

_Z = N_ZONES


@dataclass(frozen=True)
class Weights:
    """A fitted linear model over pair codes (and numeric columns)."""

    intercept: float
    pu: np.ndarray  # (Z,)
    do: np.ndarray  # (Z,)
    pair: np.ndarray  # (Z*Z,)
    numeric: np.ndarray  # (k,)

    def pair_prediction(self) -> np.ndarray:
        """Prediction of the one-hot part for every pair code, (Z*Z,)."""
        return np.asarray((self.intercept + self.pu[:, None] + self.do[None, :]).ravel() + self.pair)


def _gram(d: np.ndarray) -> np.ndarray:
    """``Uᵀ diag(d) U`` where row p of U is one-hot at (intercept, pu(p), do(p))."""
    d = d.reshape(_Z, _Z)
    by_pu, by_do = d.sum(axis=1), d.sum(axis=0)
    g = np.zeros((1 + 2 * _Z, 1 + 2 * _Z))
    g[0, 0] = d.sum()
    g[0, 1 : 1 + _Z] = g[1 : 1 + _Z, 0] = by_pu
    g[0, 1 + _Z :] = g[1 + _Z :, 0] = by_do
    g[1 : 1 + _Z, 1 : 1 + _Z] = np.diag(by_pu)
    g[1 + _Z :, 1 + _Z :] = np.diag(by_do)
    g[1 : 1 + _Z, 1 + _Z :] = d
    g[1 + _Z :, 1 : 1 + _Z] = d.T
    return g


def _project(v: np.ndarray) -> np.ndarray:
    """``Uᵀ v`` for a per-pair vector ``v``."""
    v = v.reshape(_Z, _Z)
    return np.concatenate(([v.sum()], v.sum(axis=1), v.sum(axis=0)))


def solve(stats: Stats, alpha: float) -> Weights:
    """Ridge weights minimising ``‖y - Xw - b‖² + α‖w‖²`` on pooled ``stats``."""
    if alpha <= 0:
        raise ValueError("alpha must be positive (use a small one for plain least squares)")
    s = stats.total()
    n, sy = s.count[0], s.sum_y[0]
    sx = s.sum_x[0]  # (k, P)
    k = sx.shape[0]
    r = 1.0 / (n + alpha)
    q = alpha * r  # 1 - n r, formed without cancellation
    m1 = 1 + 2 * _Z
    schur = np.zeros((m1 + k, m1 + k))
    rhs = np.zeros(m1 + k)
    schur[:m1, :m1] = _gram(n * q)
    schur[:m1, :m1] += alpha * np.diag(np.r_[0.0, np.ones(2 * _Z)])
    rhs[:m1] = _project(q * sy)
    if k:
        cross = np.stack([_project(q * sx[j]) for j in range(k)], axis=1)
        schur[:m1, m1:] = cross
        schur[m1:, :m1] = cross.T
        schur[m1:, m1:] = s.sum_xx[0] - (sx * r) @ sx.T + alpha * np.eye(k)
        rhs[m1:] = s.sum_xy[0] - sx @ (r * sy)
    dense = np.linalg.solve(schur, rhs)
    intercept, pu, do, numeric = dense[0], dense[1 : 1 + _Z], dense[1 + _Z : m1], dense[m1:]
    onehot = (intercept + pu[:, None] + do[None, :]).ravel()
    pair = r * (sy - n * onehot - numeric @ sx)
    return Weights(float(intercept), pu, do, pair, numeric)


def sse(weights: Weights, stats: Stats) -> np.ndarray:
    """Sum of squared errors per fold of ``stats``, exactly, without the rows.

    ``Σ(f_p + x·v - y)²`` expands into the statistics: ``yᵀy - 2Σ f_p s_p + Σ n_p f_p²``
    plus the numeric terms.
    """
    f = weights.pair_prediction()
    v = weights.numeric
    out = stats.sum_yy - 2 * stats.sum_y @ f + stats.count @ (f * f)
    if v.size:
        xv = np.einsum("k,fkp->fp", v, stats.sum_x)  # per-pair Σ x·v
        out = out + 2 * xv @ f - 2 * stats.sum_xy @ v + np.einsum("k,fkl,l->f", v, stats.sum_xx, v)
    return np.asarray(out)


def rmse(weights: Weights, stats: Stats) -> float:
    """Root mean squared error over all folds of ``stats`` pooled."""
    total = stats.total()
    rows = total.count.sum()
    return float(np.sqrt(max(sse(weights, total)[0], 0.0) / rows))
