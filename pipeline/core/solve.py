"""Exact ridge regression from :class:`~pipeline.core.stats.Stats`, by a Schur complement.

Unknowns: an intercept (not penalised, as scikit-learn's ``fit_intercept``), one
weight per pickup zone, per dropoff zone, per numeric column and per factor level
(the *dense* block, 533 + k + K unknowns) and one per pickup-dropoff pair (the
*pair* block, 70k unknowns). Every row has exactly one pair, so the pair block of
``XᵀX + αI`` is diagonal: eliminating it leaves a dense (533 + k + K)² system,
solved directly. A factor level meets the pairs through its counts per pair
(``Stats.cross``), so its part of the Schur complement is one ``K × P`` product.
A model without some zone terms drops their rows and columns; without ``PU_DO``
there is no pair block to eliminate (``r = 0``, ``q = 1`` below).
With ``q = α / (n_p + α)`` the one-hot part of the Schur complement is formed
as ``Σ n_p q_p u_p u_pᵀ`` rather than as a difference of large numbers, so a
small alpha loses no precision. As alpha goes to 0 the solution tends to the
minimum-norm least-squares one, which is what ``LinearRegression`` returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from pipeline.core import buffers
from pipeline.core.features import N_ZONES
from pipeline.core.stats import Packed, Stats
from pipeline.core.terms import ZONE_TERMS

_Z = N_ZONES


@dataclass(frozen=True)
class Weights:
    """A fitted linear model over pair codes (and numeric columns)."""

    intercept: float
    pu: np.ndarray  # (Z,)
    do: np.ndarray  # (Z,)
    pair: np.ndarray  # (Z*Z,)
    numeric: np.ndarray  # (k,)
    levels: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (K,) one per factor level

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


def _project_rows(m: np.ndarray | sp.csr_matrix, pairs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``Uᵀ diag(weights)`` of each row of ``m`` (rows × ``pairs``), as columns: (1 + 2Z, rows).

    One sparse product over the zone rows of ``U`` (2 non-zeros per pair); a dense ``m`` in Fortran order is read in
    place, not copied, once per non-zero. The intercept's row is the pickup zones' added up (each pair has one): a
    third row of ``U`` would read ``m`` a third time.
    """
    pu, do = np.divmod(pairs, _Z)
    at = np.r_[pu, _Z + do]
    u = sp.csr_matrix((np.tile(weights, 2), (at, np.tile(np.arange(pairs.size), 2))), shape=(2 * _Z, pairs.size))
    product = u @ m.T
    out = np.empty((1 + 2 * _Z, m.shape[0]))
    out[1:] = product.toarray() if sp.issparse(product) else product
    out[0] = out[1 : 1 + _Z].sum(axis=0)
    return out


#: Counts per level and pair sparser than this go to the solve as a sparse matrix. Real months fill about 1% of the
#: cells (0.2% with a zone interaction); a generated month, whose trips spread evenly over hours, about 20%.
SPARSE_BELOW = 0.05


def _level_cross(counts: np.ndarray) -> np.ndarray | sp.csr_matrix:
    """The counts per level and pair as floats: sparse when few cells are filled, else dense in Fortran order
    (columns contiguous for :func:`_project_rows`)."""
    if counts.size and np.count_nonzero(counts) < SPARSE_BELOW * counts.size:
        return sp.csr_matrix(counts, dtype=np.float64)
    floats = _fortran(counts.shape)
    np.copyto(floats, counts)
    return floats


def _fortran(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float64 matrix in Fortran order, in Arrow's memory pool (:mod:`pipeline.core.buffers`): a CV
    task's matrices of tens of MB, one per fold and alpha, cost no fresh pages."""
    rows, columns = shape
    return buffers.empty(rows * columns, np.float64).reshape(columns, rows).T


@dataclass(frozen=True)
class Prepared:
    """Statistics with each fold's counts per level and pair converted to floats once: a fold's solves at every alpha,
    and its scores, read the same matrices (a conversion costs as much as a solve's products with a rich spec)."""

    stats: Stats  # without its integer counts per level and pair (shape (folds, K, 0)): ``cross`` holds them
    cross: tuple[np.ndarray | sp.csr_matrix, ...]  # per fold, (K, stats.cross_pairs)

    @classmethod
    def of(cls, stats: Stats) -> Prepared:
        cross = tuple(_level_cross(c) for c in stats.cross) if stats.n_levels else ()
        return cls(_without_cross(stats), cross)

    @classmethod
    def held_out(cls, stats: Stats) -> Prepared:
        """Statistics only scored on, their counts per level and pair as sparse matrices however many are filled: an
        error sum reads them once, and a dense float copy of a validation month takes tens of MB."""
        cross = tuple(sp.csr_matrix(c, dtype=np.float64) for c in stats.cross) if stats.n_levels else ()
        return cls(_without_cross(stats), cross)

    @property
    def rows(self) -> int:
        return self.stats.rows

    def total(self) -> Prepared:
        """All folds pooled into one, prepared."""
        if self.stats.folds == 1:
            return self
        pooled = sum(self.cross[1:], self.cross[0]) if self.cross else None
        return Prepared(self.stats.total(), () if pooled is None else (pooled,))


def prepared(stats: Stats | Prepared) -> Prepared:
    """``stats`` prepared (itself when it is)."""
    return stats if isinstance(stats, Prepared) else Prepared.of(stats)


def _without_cross(stats: Stats) -> Stats:
    return replace(stats, cross=stats.cross[:, :, :0])


def prepared_folds(pooled: Stats | Packed, whole: Stats, folds: Sequence[int]) -> Iterator[tuple[int, Prepared, Prepared]]:
    """Each fold of ``pooled`` as (fold, its training statistics ``whole`` less the fold, the fold's own), prepared.

    With dense counts per level and pair, the training ones go into one float matrix made once and refilled fold
    after fold, ``whole``'s counts less the fold's cells (a fresh matrix of tens of MB costs a fault for each of its
    pages on a worker, whose allocator hands freed pages back: 3 to 5 times the conversion itself), so a fold's
    training matrix is valid until the next fold is yielded. The fold's own go as a sparse matrix built from its cells:
    only its error sums read them, and no dense copy of the fold is made. Sparse counts go as :meth:`Prepared.of`
    makes them.
    """
    counts = whole.cross[0]
    if not counts.size or np.count_nonzero(counts) < SPARSE_BELOW * counts.size:
        for k in folds:
            held = pooled.fold(k)
            yield k, Prepared.of(whole - held), Prepared.held_out(held)
        return
    levels = counts.shape[0]
    train = _fortran(counts.shape)
    by_pair = train.T.reshape(-1)  # its memory, pair by pair (a view: the matrix is in Fortran order)
    for k in folds:
        level, pair, count = _fold_cells(pooled, k)
        np.copyto(train, counts)
        by_pair[pair * levels + level] -= count  # a fold's cells are unique: no lost updates
        held = replace(pooled.rest.fold(k), cross_pairs=pooled.pairs) if isinstance(pooled, Packed) else _without_cross(pooled.fold(k))
        rows = np.searchsorted(level, np.arange(levels + 1, dtype=level.dtype))  # in the levels' type: not a copy of them
        test = sp.csr_matrix((count.astype(np.float64), pair, rows), shape=counts.shape)
        yield k, Prepared(_without_cross(whole) - held, (train,)), Prepared(held, (test,))


def _fold_cells(pooled: Stats | Packed, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold ``k``'s non-zero counts per level and pair: (levels, pair columns, counts), by level, then pair."""
    if isinstance(pooled, Packed):
        cells, count = pooled.fold_cells(k)
        level, pair = np.divmod(cells, pooled.pairs.size)
        return level, pair, count
    level, pair = np.nonzero(pooled.cross[k])
    return level, pair, pooled.cross[k][level, pair]


#: Pairs per block of :func:`_scaled_gram`: its scaled copy is a block's (about 4 MB), not the matrix's.
_GRAM_BLOCK_CELLS = 1 << 19


def _scaled_gram(cross: np.ndarray, root: np.ndarray) -> np.ndarray:
    """``C diag(root²) Cᵀ`` as ``Σ B Bᵀ`` over blocks of pairs, ``B = C diag(root)`` of the block: symmetric rank-k
    updates (a quarter of the time of a product with ``diag(r) Cᵀ``), with no scaled copy of the whole matrix."""
    levels, pairs = cross.shape
    width = max(1, _GRAM_BLOCK_CELLS // max(levels, 1))
    scaled = _fortran((levels, min(width, pairs)))
    gram = np.zeros((levels, levels))
    for start in range(0, pairs, width):
        block = np.multiply(cross[:, start : start + width], root[start : start + width], out=scaled[:, : min(width, pairs - start)])
        gram += block @ block.T
    return gram


def _dense_index(zones: Sequence[str], k: int, levels: int) -> np.ndarray:
    """Rows of the dense system a model uses: the intercept, its zone blocks, numeric columns and levels."""
    index = [np.array([0])]
    if "PULocationID" in zones:
        index.append(np.arange(1, 1 + _Z))
    if "DOLocationID" in zones:
        index.append(np.arange(1 + _Z, 1 + 2 * _Z))
    index.append(np.arange(1 + 2 * _Z, 1 + 2 * _Z + k + levels))
    return np.concatenate(index)


def solve(stats: Stats | Prepared, alpha: float, zones: Sequence[str] = ZONE_TERMS) -> Weights:
    """Ridge weights minimising ``‖y - Xw - b‖² + α‖w‖²`` on pooled ``stats``, with the zone terms ``zones``."""
    if alpha <= 0:
        raise ValueError("alpha must be positive (use a small one for plain least squares)")
    pooled = prepared(stats.total())
    s = pooled.stats
    n, sy = s.count[0], s.sum_y[0]
    sx = s.sum_x[0]  # (k, P)
    active = s.cross_pairs  # a level meets only the pairs that have rows
    levels = s.n_levels
    cross = pooled.cross[0] if levels else np.zeros((0, active.size))  # (K, those pairs)
    k = sx.shape[0]
    if "PU_DO" in zones:
        r = 1.0 / (n + alpha)
        q = alpha * r  # 1 - n r, formed without cancellation
    else:  # no pair block to eliminate
        r, q = np.zeros(n.shape), np.ones(n.shape)
    m1 = 1 + 2 * _Z
    m2 = m1 + k
    schur = np.zeros((m2 + levels, m2 + levels))
    rhs = np.zeros(m2 + levels)
    schur[:m1, :m1] = _gram(n * q)
    schur[:m1, :m1] += alpha * np.diag(np.r_[0.0, np.ones(2 * _Z)])
    rhs[:m1] = _project(q * sy)
    if k:
        cross_x = np.stack([_project(q * sx[j]) for j in range(k)], axis=1)
        schur[:m1, m1:m2] = cross_x
        schur[m1:m2, :m1] = cross_x.T
        schur[m1:m2, m1:m2] = s.sum_xx[0] - (sx * r) @ sx.T + alpha * np.eye(k)
        rhs[m1:m2] = s.sum_xy[0] - sx @ (r * sy)
    if levels:
        by_level = _project_rows(cross, active, q[active])
        schur[:m1, m2:] = by_level
        schur[m2:, :m1] = by_level.T
        if k:
            level_x = s.level_x[0] - cross @ (sx[:, active] * r[active]).T  # (K, k)
            schur[m2:, m1:m2] = level_x
            schur[m1:m2, m2:] = level_x.T
        rhs[m2:] = s.level_y[0] - cross @ (r * sy)[active]
        root = np.sqrt(r[active])
        if isinstance(cross, sp.csr_matrix):
            scaled = sp.csr_matrix(cross.multiply(root[None, :]))
            schur[m2:, m2:] = s.level_pairs[0] - (scaled @ scaled.T).toarray() + alpha * np.eye(levels)
        else:
            schur[m2:, m2:] = s.level_pairs[0] - _scaled_gram(cross, root) + alpha * np.eye(levels)
    used = _dense_index(zones, k, levels)
    dense = np.zeros(m2 + levels)
    dense[used] = np.linalg.solve(schur[np.ix_(used, used)], rhs[used])
    intercept, pu, do, numeric, by_levels = dense[0], dense[1 : 1 + _Z], dense[1 + _Z : m1], dense[m1:m2], dense[m2:]
    onehot = (intercept + pu[:, None] + do[None, :]).ravel()
    by_pair = np.zeros(n.size)
    if levels and "PU_DO" in zones:  # (without PU_DO, r = 0: the pair weights are 0 whatever by_pair is)
        by_pair[active] = cross.T @ by_levels
    pair = r * (sy - n * onehot - numeric @ sx - by_pair)
    return Weights(float(intercept), pu, do, pair, numeric, by_levels)


def sse(weights: Weights, stats: Stats | Prepared) -> np.ndarray:
    """Sum of squared errors per fold of ``stats``, exactly, without the rows.

    ``Σ(f_p + x·v + g_l - y)²`` expands into the statistics: ``yᵀy - 2Σ f_p s_p + Σ n_p f_p²``
    plus the numeric and factor terms (``g_l``: a row's level weights, one per factor).
    """
    ready = prepared(stats)
    stats = ready.stats
    f = weights.pair_prediction()
    v, g = weights.numeric, weights.levels
    out = stats.sum_yy - 2 * stats.sum_y @ f + stats.count @ (f * f)
    if v.size:
        xv = np.einsum("k,fkp->fp", v, stats.sum_x)  # per-pair Σ x·v
        out = out + 2 * xv @ f - 2 * stats.sum_xy @ v + np.einsum("k,fkl,l->f", v, stats.sum_xx, v)
    if g.size:
        by_fold = np.array([g @ (c @ f[stats.cross_pairs]) for c in ready.cross])  # Σ_lp g_l n_lp f_p
        out = out + 2 * by_fold - 2 * stats.level_y @ g + np.einsum("k,fkl,l->f", g, stats.level_pairs, g)
        if v.size:
            out = out + 2 * np.einsum("k,fkj,j->f", g, stats.level_x, v)
    return np.asarray(out)


def rmse(weights: Weights, stats: Stats | Prepared) -> float:
    """Root mean squared error over all folds of ``stats`` pooled."""
    total = stats.total()
    rows = (total.stats if isinstance(total, Prepared) else total).count.sum()
    return float(np.sqrt(max(sse(weights, total)[0], 0.0) / rows))
