"""Additive sufficient statistics for least squares on pair codes.

Least squares needs only ``XᵀX``, ``Xᵀy``, ``yᵀy`` and ``n``, and these add across
row chunks. With one-hot pickup, dropoff and pickup-dropoff features every entry
of ``XᵀX`` and ``Xᵀy`` that involves the one-hots is a sum over pairs of the
per-pair row count and target sum, so a chunk reduces to ``bincount``s over
the 266² pair codes (plus per-pair sums for any numeric columns). Statistics are
kept per fold (:func:`pipeline.core.hashing.fold_of`), so K-fold cross-validation needs no second pass: fold k trains on
``total - fold_k`` and is scored on ``fold_k``.

Target statistics are exact integers (durations in microseconds; ``yᵀy`` as a
Python int), so the same rows give bit-identical statistics and so identical
models and metrics however they are chunked, ordered or spread over workers.
Numeric-column sums are floats and may differ in the last bits.

Beside them, ``screened`` counts the rows read and dropped (:data:`pipeline.core.features.SCREENED`):
it describes the chunks read, not a fold, so fold selections keep it whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import reduce
from itertools import pairwise

import numpy as np

from pipeline.core import buffers
from pipeline.core.features import MICROS_PER_MINUTE, N_PAIRS, SCREENED, Encoded, Screened


@dataclass(frozen=True)
class Stats:
    """Per-fold statistics; axis 0 is the fold (length 1 without CV)."""

    count: np.ndarray  # (F, P) int64 rows per pair
    sum_micros: np.ndarray  # (F, P) int64 duration sums per pair, microseconds
    sum_micros2: np.ndarray  # (F,) object: Python ints, exact Σ microseconds²
    sum_x: np.ndarray  # (F, k, P) numeric column sums per pair
    sum_xy: np.ndarray  # (F, k) Σ x·minutes
    sum_xx: np.ndarray  # (F, k, k)
    screened: np.ndarray  # (4,) int64 rows read and dropped, named by SCREENED
    cross: np.ndarray  # (F, K, A) int32 rows per factor level and pair of ``cross_pairs`` (K: the factors' levels)
    level_pairs: np.ndarray  # (F, K, K) int64 rows per two levels (the diagonal: rows per level)
    level_micros: np.ndarray  # (F, K) int64 duration sums per level, microseconds
    level_x: np.ndarray  # (F, K, k) numeric column sums per level
    cross_pairs: np.ndarray  # (A,) int64 the pairs ``cross`` covers, increasing: those with rows (a level meets no other)

    @property
    def folds(self) -> int:
        return int(self.count.shape[0])

    @property
    def n_numeric(self) -> int:
        return int(self.sum_x.shape[1])

    @property
    def n_levels(self) -> int:
        return int(self.cross.shape[1])

    @property
    def rows(self) -> int:
        return int(self.count.sum())

    @property
    def level_y(self) -> np.ndarray:
        """Per-fold, per-level duration sums in minutes, (F, K) float."""
        return self.level_micros / MICROS_PER_MINUTE

    @property
    def sum_y(self) -> np.ndarray:
        """Per-fold, per-pair duration sums in minutes, (F, P) float."""
        return self.sum_micros / MICROS_PER_MINUTE

    @property
    def sum_yy(self) -> np.ndarray:
        """Per-fold Σ minutes², (F,) float."""
        return np.array([float(v) for v in self.sum_micros2]) / MICROS_PER_MINUTE**2

    def __add__(self, other: Stats) -> Stats:
        return combine([self, other])

    def __sub__(self, other: Stats) -> Stats:
        """Remove ``other``'s rows (a fold) from the fit; the rows read stay those of ``self``."""
        pairs, mine, theirs = _aligned(self, other)
        return _assemble((a - b for a, b in zip(self._arrays(), other._arrays())), self.screened, mine - theirs, pairs)

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self.count,
            self.sum_micros,
            self.sum_micros2,
            self.sum_x,
            self.sum_xy,
            self.sum_xx,
            self.level_pairs,
            self.level_micros,
            self.level_x,
        )

    def total(self) -> Stats:
        """All folds pooled into one (itself when it has one fold); counts per level and pair stay int32."""
        if self.folds == 1:
            return self
        arrays = (a.sum(axis=0, keepdims=True, dtype=a.dtype) for a in self._arrays())
        return _assemble(arrays, self.screened, self.cross.sum(axis=0, keepdims=True, dtype=np.int32), self.cross_pairs)

    def fold(self, k: int) -> Stats:
        """Fold ``k`` alone (its held-out rows)."""
        return _assemble((a[k : k + 1] for a in self._arrays()), self.screened, self.cross[k : k + 1], self.cross_pairs)

    def select(self, columns: Sequence[int], levels: Sequence[int] = ()) -> Stats:
        """The statistics of a model using only these numeric columns and factor levels (by index): those of a feature subset.

        Selecting every column and level is ``self``: a rich spec's counts per level and pair are not copied for nothing.
        """
        index, kept = list(columns), list(levels)
        if _every(self, index, kept):
            return self
        return Stats(
            self.count,
            self.sum_micros,
            self.sum_micros2,
            self.sum_x[:, index],
            self.sum_xy[:, index],
            self.sum_xx[:, index][:, :, index],
            self.screened,
            self.cross[:, kept],
            self.level_pairs[:, kept][:, :, kept],
            self.level_micros[:, kept],
            self.level_x[:, kept][:, :, index],
            self.cross_pairs,
        )

    def without(self, k: int) -> Stats:
        """Every fold but ``k`` (fold k's training rows)."""
        return self.total() - self.fold(k)

    def pack(self) -> Packed:
        """These statistics with their counts per level and pair as non-zero cells only."""
        flat = self.cross.reshape(-1)
        cells = np.flatnonzero(flat)
        if flat.size <= np.iinfo(np.int32).max:
            cells = cells.astype(np.int32)
        rest = replace(self, cross=np.zeros((*self.cross.shape[:2], 0), dtype=np.int32), cross_pairs=np.zeros(0, dtype=np.int64))
        return Packed(rest, self.cross_pairs, cells, flat[cells])  # no view of the full counts: it would keep them alive


@dataclass(frozen=True)
class Packed:
    """:class:`Stats` with the counts per level and pair kept as their non-zero cells: how statistics travel between tasks.

    A month's counts per level and pair are mostly zero (a generated 3.2M-row month
    at 5 folds and 216 levels fills 1.6M of its 24M cells), so packed its statistics
    take about 20 MB instead of 100: workers hold and send months at a fraction of
    the memory, and :func:`combine` adds packed months into one array directly.
    """

    rest: Stats  # every other field; its ``cross`` has no pairs
    pairs: np.ndarray  # (A,) int64 the pairs the cells cover, increasing
    cells: np.ndarray  # (n,) each non-zero cell's flat index into (folds, levels, A), increasing
    counts: np.ndarray  # (n,) int32 their counts

    @property
    def rows(self) -> int:
        return self.rest.rows

    @property
    def screened(self) -> np.ndarray:
        return self.rest.screened

    @property
    def folds(self) -> int:
        return self.rest.folds

    @property
    def size(self) -> int:
        """Cells of the counts per level and pair, filled or not: folds × levels × pairs."""
        return self.rest.folds * self.rest.n_levels * self.pairs.size

    def unpack(self) -> Stats:
        folds, levels = self.rest.cross.shape[:2]
        cross = np.zeros(folds * levels * self.pairs.size, dtype=np.int32)
        cross[self.cells] = self.counts
        return replace(self.rest, cross=cross.reshape(folds, levels, self.pairs.size), cross_pairs=self.pairs)

    def fold_cells(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Fold ``k``'s cells (as indices into its own levels × pairs) and counts: cells are increasing, fold first."""
        size = self.rest.n_levels * self.pairs.size
        start, stop = np.searchsorted(self.cells, np.array([k * size, (k + 1) * size], dtype=self.cells.dtype))  # no converted copy
        return self.cells[start:stop] - k * size, self.counts[start:stop]

    def _spread(self, folds: Sequence[int]) -> np.ndarray:
        """The counts per level and pair of ``folds`` added up, dense (1, levels, pairs), in Arrow's pool."""
        levels = self.rest.n_levels
        cross = buffers.empty(levels * self.pairs.size, np.int32)
        cross[:] = 0
        for k in folds:
            cells, counts = self.fold_cells(k)
            cross[cells] += counts  # a fold's cells are unique: no lost updates
        return cross.reshape(1, levels, self.pairs.size)

    def fold(self, k: int) -> Stats:
        """Fold ``k`` alone (its held-out rows), its counts spread: the other folds stay packed."""
        return replace(self.rest.fold(k), cross=self._spread([k]), cross_pairs=self.pairs)

    def total(self) -> Stats:
        """All folds pooled into one, spread fold by fold: never every fold's counts at once."""
        return replace(self.rest.total(), cross=self._spread(range(self.folds)), cross_pairs=self.pairs)

    def select(self, columns: Sequence[int], levels: Sequence[int] = ()) -> Part:
        """:meth:`Stats.select`: itself when it selects everything, else of the statistics unpacked."""
        if _every(self.rest, list(columns), list(levels)):
            return self
        return self.unpack().select(columns, levels)


def compact(stats: Part) -> Part:
    """``stats`` packed when that takes less memory (fewer than half its counts per level and pair are non-zero), else
    spread: a packed cell takes an index and a count."""
    if isinstance(stats, Packed):
        return stats if 2 * stats.cells.size < stats.size else stats.unpack()
    return stats.pack() if 2 * np.count_nonzero(stats.cross) < stats.cross.size else stats


def _every(stats: Stats, columns: list[int], levels: list[int]) -> bool:
    """Whether ``columns`` and ``levels`` are every numeric column and level of ``stats``, in order."""
    return columns == list(range(stats.n_numeric)) and levels == list(range(stats.n_levels))


#: Statistics as :func:`combine` adds them: whole, or packed.
Part = Stats | Packed


def _assemble(arrays: Iterable[np.ndarray], screened: np.ndarray, cross: np.ndarray, pairs: np.ndarray) -> Stats:
    """Statistics from the fit's arrays (in :meth:`Stats._arrays` order), the rows-read counts and the counts per level and pair."""
    count, sum_micros, sum_micros2, sum_x, sum_xy, sum_xx, level_pairs, level_micros, level_x = arrays
    return Stats(count, sum_micros, sum_micros2, sum_x, sum_xy, sum_xx, screened, cross, level_pairs, level_micros, level_x, pairs)


def _aligned(a: Stats, b: Stats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both counts per level and pair over the union of their pairs: (pairs, a's, b's)."""
    if np.array_equal(a.cross_pairs, b.cross_pairs):
        return a.cross_pairs, a.cross, b.cross
    pairs = np.union1d(a.cross_pairs, b.cross_pairs)

    def spread(s: Stats) -> np.ndarray:
        out = np.zeros((*s.cross.shape[:2], pairs.size), dtype=np.int32)
        out[..., np.searchsorted(pairs, s.cross_pairs)] = s.cross
        return out

    return pairs, spread(a), spread(b)


def _no_levels(folds: int, k: int) -> tuple[np.ndarray, ...]:
    """The factor fields of statistics without factors."""
    return (
        np.zeros((folds, 0, 0), dtype=np.int32),
        np.zeros((folds, 0, 0), dtype=np.int64),
        np.zeros((folds, 0), dtype=np.int64),
        np.zeros((folds, 0, k)),
        np.zeros(0, dtype=np.int64),
    )


def empty(folds: int = 1, n_numeric: int = 0, n_levels: int = 0) -> Stats:
    """The zero of ``+``."""
    return Stats(
        count=np.zeros((folds, N_PAIRS), dtype=np.int64),
        sum_micros=np.zeros((folds, N_PAIRS), dtype=np.int64),
        sum_micros2=np.array([0] * folds, dtype=object),
        sum_x=np.zeros((folds, n_numeric, N_PAIRS)),
        sum_xy=np.zeros((folds, n_numeric)),
        sum_xx=np.zeros((folds, n_numeric, n_numeric)),
        screened=np.zeros(len(SCREENED), dtype=np.int64),
        cross=np.zeros((folds, n_levels, 0), dtype=np.int32),
        level_pairs=np.zeros((folds, n_levels, n_levels), dtype=np.int64),
        level_micros=np.zeros((folds, n_levels), dtype=np.int64),
        level_x=np.zeros((folds, n_levels, n_numeric)),
        cross_pairs=np.zeros(0, dtype=np.int64),
    )


#: Integers below this are exact in float64, and so are sums whose every partial sum stays below it.
_EXACT_FLOAT = 1 << 53
#: Rows per block of :func:`_square_sums`: 2^16 products below 2^32 sum to below 2^48, exactly in float64.
_SQUARE_BLOCK = 1 << 16


def _exact_sums(index: np.ndarray, micros: np.ndarray, size: int, count: np.ndarray, floats: np.ndarray | None = None) -> np.ndarray:
    """Per-index Σ micros as int64, exactly (``floats``: the same durations as float64, when given).

    ``bincount`` sums in float64: exact when no bin's sum can reach 2^53 (its row
    count times the largest duration), as for any chunk of the seed's durations;
    otherwise the sums go by 16-bit limbs.
    """
    if not micros.size or int(count.max()) * max(-int(micros.min()), int(micros.max())) < _EXACT_FLOAT:
        return np.bincount(index, weights=micros if floats is None else floats, minlength=size).astype(np.int64)
    high = np.bincount(index, weights=micros >> 16, minlength=size)
    low = np.bincount(index, weights=micros & 0xFFFF, minlength=size)
    return (high.astype(np.int64) << 16) + low.astype(np.int64)


def _exact_square_sum(micros: np.ndarray) -> int:
    """Σ micros² as a Python int (int64 dot products on 16-bit limbs cannot overflow per chunk)."""
    high, low = micros >> 16, micros & 0xFFFF
    return (int(high @ high) << 32) + (int(high @ low) << 17) + int(low @ low)


def _square_sums(micros: np.ndarray, fold: np.ndarray | None, folds: int) -> np.ndarray:
    """Σ micros² per fold as Python ints, exactly.

    Durations below 2^32 µs (71 minutes) split into 16-bit limbs whose products
    are below 2^32, so float64 dot products (one fold) or weighted ``bincount``s
    (per fold) over blocks of 2^16 rows are exact (sums below 2^48), and several
    times faster than integer ones: a block's temporaries stay in cache. Longer
    durations take the integer path.
    """
    if micros.size and max(-int(micros.min()), int(micros.max())) >= 1 << 32:
        return np.array([_exact_square_sum(micros if fold is None else micros[fold == f]) for f in range(folds)], dtype=object)
    limbs = np.zeros((3, folds), dtype=np.int64)  # 2^15 blocks of sums below 2^48 fit: chunks up to 2^31 rows
    for start in range(0, micros.size, _SQUARE_BLOCK):
        block = micros[start : start + _SQUARE_BLOCK]
        hi, lo = (block >> 16).astype(np.float64), (block & 0xFFFF).astype(np.float64)
        if fold is None:
            limbs[:, 0] += np.array([hi @ hi, hi @ lo, lo @ lo]).astype(np.int64)
        else:
            f = fold[start : start + _SQUARE_BLOCK]
            limbs += np.array([np.bincount(f, weights=w, minlength=folds) for w in (hi * hi, hi * lo, lo * lo)]).astype(np.int64)
    high, middle, low = limbs.astype(object)
    sums: np.ndarray = (high << 32) + (middle << 17) + low
    return sums


@dataclass(frozen=True)
class Levels:
    """Each row's factor levels, (rows, factors) offset codes (:func:`pipeline.core.features.factor_codes`), and the factors' sizes."""

    codes: np.ndarray
    sizes: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def offsets(self) -> list[int]:
        return [sum(self.sizes[:j]) for j in range(len(self.sizes))]


def compute(encoded: Encoded, fold: np.ndarray | None = None, folds: int = 1, levels: Levels | None = None) -> Stats:
    """Statistics of one encoded chunk, split by ``fold`` (one fold when None); ``levels`` of its kept rows."""
    fold = _fold_ids(fold, folds, encoded.rows)
    index = encoded.pair if fold is None else fold * N_PAIRS + encoded.pair
    count = np.bincount(index, minlength=folds * N_PAIRS)
    return _statistics(index, count, encoded.micros, encoded.x, fold, folds, encoded.screened.copy(), levels).unpack()


def compute_screened(
    blocks: Iterable[Screened],
    rows: int,
    fold: np.ndarray | None = None,
    folds: int = 1,
    x: np.ndarray | None = None,
    levels: Levels | None = None,
) -> Packed:
    """:func:`compute` of the rows :func:`pipeline.core.features.encode` would keep, straight from the screened blocks,
    packed: the counts per level and pair are counted as non-zero cells and never spread over every cell.

    No kept-row arrays are gathered: a dropped row gets pair code 0, which no kept
    row has (zone 0 is no zone), and duration 0, and pair 0's count is cleared, so
    the sums are those of the kept rows, bit for bit; numeric products and factor
    levels set the dropped rows aside by the keep mask (a gathered copy of the kept
    rows cost about a sixth of a rich spec's chunk on a worker, in fresh pages). ``fold`` and ``x`` (numeric
    columns) and ``levels`` (factor levels) cover all ``rows`` of the chunk. When no kept duration can reach 2^32 µs
    (the seed's window) durations go as floats and are squared by limbs block by
    block, while in cache; otherwise they take :func:`compute`'s integer paths.
    """
    k = 0 if x is None else x.shape[1]
    if not rows:
        return empty(folds, k, 0 if levels is None else levels.total).pack()
    fold = _fold_ids(fold, folds, rows)
    spread = None if fold is None else fold * N_PAIRS
    index = buffers.empty(rows, np.int64)
    keep = buffers.empty(rows, np.bool_) if k or levels is not None else None
    screened = np.zeros(len(SCREENED), dtype=np.int64)
    squares = _Limbs(folds)
    micros, longest = None, 0
    for block in blocks:
        if micros is None:
            longest = block.longest
            micros = buffers.empty(rows, np.float64 if longest < 1 << 32 else np.int64)
        part = slice(block.start, block.start + block.rows)
        np.multiply(block.codes, block.keep, out=index[part])
        np.multiply(block.micros, block.keep, out=micros[part], dtype=micros.dtype)
        if spread is not None:
            index[part] += spread[part]
        if micros.dtype == np.float64:
            squares.add(micros[part], None if fold is None else fold[part])
        if keep is not None:
            keep[part] = block.keep
        screened += block.counts
    assert micros is not None  # rows > 0 gives a block
    count = np.bincount(index, minlength=folds * N_PAIRS)
    count[::N_PAIRS] = 0
    if keep is not None or micros.dtype != np.float64:
        # every row, as below: a dropped row's pair code and duration are 0 (pair 0's counts are cleared), and ``keep``
        # sets aside its numeric values and factor levels, so no copy of the kept rows is gathered
        durations, as_floats = micros, None
        if micros.dtype == np.float64:  # exact: below 2^32
            durations, as_floats = buffers.empty(rows, np.int64), micros
            np.copyto(durations, as_floats, casting="unsafe")
        return _statistics(
            index,
            count,
            durations,
            np.empty((0, 0)) if x is None else x,
            fold,
            folds,
            screened,
            levels,
            as_floats,
            squares.total() if as_floats is not None else None,  # summed block by block above: dropped rows are 0
            keep,
        )
    if int(count.max()) * longest < _EXACT_FLOAT:
        sum_micros = np.bincount(index, weights=micros, minlength=folds * N_PAIRS).astype(np.int64)
    else:
        sum_micros = _exact_sums(index, micros.astype(np.int64), folds * N_PAIRS, count)
    no_numeric = (np.zeros((folds, 0, N_PAIRS)), np.zeros((folds, 0)), np.zeros((folds, 0, 0)))
    whole = Stats(
        count.reshape(folds, N_PAIRS), sum_micros.reshape(folds, N_PAIRS), squares.total(), *no_numeric, screened, *_no_levels(folds, 0)
    )
    return whole.pack()


class _Limbs:
    """Exact Σ micros² per fold from float durations below 2^32, added block by block (see :func:`_square_sums`)."""

    def __init__(self, folds: int) -> None:
        self.folds = folds
        self.sums = np.zeros((3, folds), dtype=np.int64)
        self.high, self.low, self.product = (buffers.empty(_SQUARE_BLOCK, np.float64) for _ in range(3))

    def add(self, micros: np.ndarray, fold: np.ndarray | None) -> None:
        for start in range(0, micros.size, _SQUARE_BLOCK):
            block = micros[start : start + _SQUARE_BLOCK]
            high, low = self.high[: block.size], self.low[: block.size]
            np.floor(np.multiply(block, 1 / 65536, out=high), out=high)  # micros >> 16: scaling by 2^-16 is exact
            np.subtract(block, np.multiply(high, 65536, out=low), out=low)  # micros & 0xFFFF
            if fold is None:
                self.sums[:, 0] += np.array([high @ high, high @ low, low @ low]).astype(np.int64)
                continue
            f, product = fold[start : start + _SQUARE_BLOCK], self.product[: block.size]
            for limb, (a, b) in enumerate(((high, high), (high, low), (low, low))):
                self.sums[limb] += np.bincount(f, weights=np.multiply(a, b, out=product), minlength=self.folds).astype(np.int64)

    def total(self) -> np.ndarray:
        high, middle, low = self.sums.astype(object)
        sums: np.ndarray = (high << 32) + (middle << 17) + low
        return sums


def _fold_ids(fold: np.ndarray | None, folds: int, rows: int) -> np.ndarray | None:
    """None for one fold, else each row's fold (all 0 when not given)."""
    if folds == 1:
        return None
    return np.zeros(rows, dtype=np.int64) if fold is None else fold


def _statistics(
    index: np.ndarray,
    count: np.ndarray,
    micros: np.ndarray,
    x: np.ndarray,
    fold: np.ndarray | None,
    folds: int,
    screened: np.ndarray,
    levels: Levels | None = None,
    floats: np.ndarray | None = None,
    squares: np.ndarray | None = None,
    keep: np.ndarray | None = None,
) -> Packed:
    """The sums of :class:`Stats` from each row's ``fold * N_PAIRS + pair`` index and the counts per index, packed
    (``floats``: the durations as float64 when they are exact, which saves a conversion per sum; ``squares``: Σ micros²
    per fold when already summed; ``keep``: the rows kept, when dropped ones are among them with pair 0 and duration 0)."""
    size = folds * N_PAIRS
    k = x.shape[1]
    sum_micros = _exact_sums(index, micros, size, count, floats).reshape(folds, N_PAIRS)
    sum_micros2 = _square_sums(micros, fold, folds) if squares is None else squares
    sum_x = np.zeros((folds, k, N_PAIRS))
    sum_xy = np.zeros((folds, k))
    sum_xx = np.zeros((folds, k, k))
    if k:
        y = micros / MICROS_PER_MINUTE
        for j in range(k):
            sum_x[:, j] = np.bincount(index, weights=x[:, j], minlength=size).reshape(folds, N_PAIRS)
        if keep is not None:
            sum_x[:, :, 0] = 0  # the dropped rows' pair
        for f in range(folds):  # the kept rows of the fold, in order: the same products whether dropped rows came along
            rows: slice | np.ndarray = slice(None) if fold is None else fold == f
            if keep is not None:
                rows = keep if fold is None else rows & keep
            sum_xy[f] = x[rows].T @ y[rows]
            sum_xx[f] = x[rows].T @ x[rows]
    if levels is None:
        whole = Stats(count.reshape(folds, N_PAIRS), sum_micros, sum_micros2, sum_x, sum_xy, sum_xx, screened, *_no_levels(folds, k))
        return whole.pack()
    pairs, cells, counts, level_pairs, level_micros, level_x = _level_statistics(index, micros, x, fold, folds, levels, floats, keep)
    no_pairs = np.zeros((folds, levels.total, 0), dtype=np.int32)
    sums = (count.reshape(folds, N_PAIRS), sum_micros, sum_micros2, sum_x, sum_xy, sum_xx, screened)
    return Packed(Stats(*sums, no_pairs, level_pairs, level_micros, level_x, pairs[:0]), pairs, cells, counts)


def _level_statistics(
    index: np.ndarray,
    micros: np.ndarray,
    x: np.ndarray,
    fold: np.ndarray | None,
    folds: int,
    levels: Levels,
    floats: np.ndarray | None = None,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """The factor fields of :class:`Stats`: counts per level and pair, per two levels, and sums per level.

    Counts per level and pair are counted per factor by sorting each row's cell
    (fold, level, pair with rows in the chunk) as a 32-bit key, whose sort is
    several times faster than a 64-bit one; their runs are the non-zero cells,
    returned as :class:`Packed` keeps them: no array over every cell (a 3.2M-row
    month at 5 folds and 216 levels has 25M cells, 1.4M of them filled), neither
    a ``bincount``'s nor a dense one to pack. Counts per two levels need one
    ``bincount`` per two factors (the diagonal is the counts per level), and the
    rest are small. Duration sums are exact integers, as the pairs'.

    Rows that ``keep`` drops (pair 0) take one more level past every fold's, whose counts and sums are left out.
    """
    total, k, factors, rows = levels.total, x.shape[1], len(levels.sizes), micros.size
    pair_of = index
    if fold is not None:
        pair_of = np.multiply(fold, N_PAIRS, out=buffers.empty(rows, np.int64))
        np.subtract(index, pair_of, out=pair_of)
    pairs = np.flatnonzero(np.bincount(pair_of, minlength=N_PAIRS))
    dropped = None if keep is None else np.logical_not(keep, out=buffers.empty(rows, np.bool_))
    if dropped is not None:
        pairs = pairs[pairs > 0]  # the dropped rows' (no kept row has zone 0)
    aside = folds * total  # the dropped rows' level, in every factor (bins past it: ``width``)
    width = aside + (dropped is not None)
    size = width * pairs.size
    key = np.int32 if size <= np.iinfo(np.int32).max else np.int64
    compact = np.zeros(N_PAIRS, dtype=key)
    compact[pairs] = np.arange(pairs.size)
    pair = np.take(compact, pair_of, out=buffers.empty(rows, key))
    at = []  # each row's level of each factor in its fold: fold * total + level
    for j in range(factors):
        at.append(buffers.empty(rows, key))
        if fold is None:
            at[j][:] = levels.codes[:, j]
        else:
            np.multiply(fold, total, out=at[j], casting="unsafe")
            at[j] += levels.codes[:, j]
        if dropped is not None:
            np.copyto(at[j], aside, where=dropped)
    cell, edge = buffers.empty(rows, key), buffers.empty(rows, np.bool_)
    found: list[tuple[np.ndarray, np.ndarray]] = []  # each factor's non-zero cells, increasing, and their counts
    level_pairs = np.zeros((folds, total, total), dtype=np.int64)
    level_micros = np.zeros(folds * total, dtype=np.int64)
    level_x = np.zeros((folds * total, k))
    count = np.zeros(folds * total, dtype=np.int64)
    for j in range(factors):
        at_count = np.bincount(at[j], minlength=width)
        count += at_count[:aside]
        level_micros += _exact_sums(at[j], micros, width, at_count, floats)[:aside]
        for c in range(k):
            level_x[:, c] += np.bincount(at[j], weights=x[:, c], minlength=width)[:aside]
        np.multiply(at[j], pairs.size, out=cell)
        cell += pair
        cell.sort()  # equal cells side by side: their runs are the counts
        edge[:1] = True
        np.not_equal(cell[1:], cell[:-1], out=edge[1:])
        starts = np.flatnonzero(edge)
        found.append((cell[starts], np.diff(starts, append=rows).astype(np.int32)))
        for i in range(j):  # rows per level of factor i and of factor j, in one of the two triangles
            np.multiply(at[i], total, out=cell)
            cell += levels.codes[:, j]
            level_pairs += np.bincount(cell, minlength=width * total)[: level_pairs.size].reshape(level_pairs.shape)
    level_pairs += level_pairs.transpose(0, 2, 1)
    diagonal = level_pairs.reshape(folds, -1)[:, :: total + 1]
    diagonal += count.reshape(folds, total)
    # in increasing order: by fold, then by factor (a factor's levels are a range of their own), as each factor's are
    fold_starts = np.arange(folds + 1) * total * pairs.size
    bounds = [np.searchsorted(cells, fold_starts.astype(cells.dtype)) for cells, _ in found]  # in the cells' type: not a copy of them
    order = [(j, slice(b[f], b[f + 1])) for f in range(folds) for j, b in enumerate(bounds)]
    cells = np.concatenate([found[j][0][rows] for j, rows in order]) if found else np.zeros(0, dtype=key)
    counts = np.concatenate([found[j][1][rows] for j, rows in order]) if found else np.zeros(0, dtype=np.int32)
    return pairs, cells, counts, level_pairs, level_micros.reshape(folds, total), level_x.reshape(folds, total, k)


def combine(parts: Sequence[Part]) -> Stats:
    """The sum of one or more statistics, whole or packed.

    The counts per level and pair are added in one array over the union of the
    parts' pairs, each part's cells or columns added in place: the cost of the
    parts, not of the sum times the number of parts.
    """
    rests = [part.rest if isinstance(part, Packed) else part for part in parts]
    first = rests[0]
    for rest in rests[1:]:
        if rest.count.shape != first.count.shape or rest.sum_x.shape != first.sum_x.shape or rest.cross.shape[:2] != first.cross.shape[:2]:
            raise ValueError("statistics of different fold counts or features cannot be added")
    arrays = (reduce(np.add, fields) for fields in zip(*(rest._arrays() for rest in rests)))
    pairs = reduce(np.union1d, (part.pairs if isinstance(part, Packed) else part.cross_pairs for part in parts))
    folds, levels = first.cross.shape[:2]
    cross = np.zeros((folds * levels, pairs.size), dtype=np.int32)
    flat = cross.reshape(-1)
    for part in parts:
        if isinstance(part, Stats):
            cross[:, np.searchsorted(pairs, part.cross_pairs)] += part.cross.reshape(folds * levels, part.cross_pairs.size)
        elif part.cells.size:  # each cell's index in the sum, in Arrow's pool (no fresh pages a part): row * pairs + column
            row, column = (buffers.empty(part.cells.size, np.int64) for _ in range(2))
            np.divmod(part.cells, part.pairs.size, out=(row, column))
            np.take(np.searchsorted(pairs, part.pairs), column, out=column)
            row *= pairs.size
            row += column
            flat[row] += part.counts  # cells are unique: no lost updates
    screened = reduce(np.add, (rest.screened for rest in rests))
    return _assemble(arrays, screened, cross.reshape(folds, levels, pairs.size), pairs)


#: Cells per block of :func:`add_packed`: the block's counts (4 MB as int32) stay in cache while each part adds to it.
_ADD_BLOCK_CELLS = 1 << 20


def add_packed(parts: Sequence[Packed]) -> Packed:
    """:func:`combine` of packed parts, packed, without an array over every cell of the sum.

    The sum's rows (fold, level) are added a block at a time in one small array, each part's cells of the block
    placed by its pairs' columns in the sum, then the block's non-zero cells kept. The same statistics, to the bit,
    as ``combine(parts).pack()``; a generated year's pool (11 months at 5 folds and 216 levels: 41M cells, 18M of
    them in the parts) without its 163 MB of dense counts, scattered into at random, and their scan.
    """
    rest = combine([part.rest for part in parts])
    pairs = reduce(np.union1d, (part.pairs for part in parts))
    rows = rest.n_levels * rest.folds
    size = rows * pairs.size
    columns = [np.searchsorted(pairs, part.pairs) for part in parts]
    step = max(1, _ADD_BLOCK_CELLS // max(pairs.size, 1))
    firsts = np.arange(0, rows + step, step).clip(max=rows)
    # each part's cells of each block, found at once (in the cells' own type: no converted copy per search)
    bounds = [np.searchsorted(part.cells, (firsts * part.pairs.size).astype(part.cells.dtype)) for part in parts]
    block = buffers.empty(step * pairs.size, np.int32)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    for b, (first, last) in enumerate(pairwise(firsts)):
        counts = block[: (last - first) * pairs.size]
        counts[:] = 0
        for part, column, bound in zip(parts, columns, bounds):
            start, stop = bound[b], bound[b + 1]
            row, at = np.divmod(part.cells[start:stop].astype(np.int64), part.pairs.size)
            row -= first
            row *= pairs.size
            row += column[at]
            counts[row] += part.counts[start:stop]  # a part's cells are unique: no lost updates
        filled = np.flatnonzero(counts)
        found.append((filled + first * pairs.size, counts[filled]))
    cells = np.concatenate([c for c, _ in found]) if found else np.zeros(0, dtype=np.int64)
    counts = np.concatenate([n for _, n in found]) if found else np.zeros(0, dtype=np.int32)
    return Packed(rest, pairs, cells.astype(np.int32) if size <= np.iinfo(np.int32).max else cells, counts)


def pool(parts: Sequence[Part]) -> Part:
    """:func:`compact` of :func:`combine`: the parts added packed by :func:`add_packed`."""
    return compact(add_packed([part if isinstance(part, Packed) else part.pack() for part in parts]))
