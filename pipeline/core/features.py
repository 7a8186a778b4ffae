"""Seed-equivalent features, straight to integer codes: no strings, no dicts.

The seed one-hot encodes ``PULocationID``, ``DOLocationID`` and ``PU_DO`` through
``DictVectorizer``. Here a row becomes one pair code ``pu * N_ZONES + do``: the
pickup and dropoff one-hots are recoverable from it, so a pair code carries all
three one-hot features. Numeric columns (``trip_distance``...) ride along as floats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import buffers
from pipeline.core.months import Month
from pipeline.core.schema import DO, DROPOFF, PICKUP, PU, REQUIRED
from pipeline.core.terms import N_ZONES as N_ZONES  # re-exported: the zone codes' range, where pair codes are made
from pipeline.core.terms import ZONE_TERMS, Clock, Factor, parse_terms

N_PAIRS = N_ZONES * N_ZONES
MICROS_PER_MINUTE = 60_000_000
MICROS_PER_DAY = 86_400_000_000
#: What :func:`encode` counts in a chunk, in the order of ``Encoded.screened``. ``dropped_by_duration``
#: counts only rows whose timestamps and zones are all good; the last two may overlap (a row with both bad).
SCREENED = ("rows_read", "dropped_by_duration", "out_of_range_timestamps", "out_of_range_zones")


@dataclass(frozen=True)
class FeatureSpec:
    """What a model sees: its terms (:mod:`pipeline.core.terms`) and the duration window kept.

    ``zones`` are the seed's one-hots it uses, ``numeric`` raw columns, ``factors``
    small one-hot terms (bins, time of pickup, their interactions). The default is the seed's.
    """

    numeric: tuple[str, ...] = ()
    min_minutes: float = 1.0
    max_minutes: float = 60.0
    zones: tuple[str, ...] = ZONE_TERMS
    factors: tuple[Factor, ...] = ()

    @classmethod
    def of(cls, terms: str | Sequence[str], min_minutes: float = 1.0, max_minutes: float = 60.0) -> FeatureSpec:
        """The spec of a term list (``--features``); :class:`pipeline.core.terms.TermError` names a bad term."""
        parsed = parse_terms(terms)
        return cls(parsed.numeric, min_minutes, max_minutes, parsed.zones, parsed.factors)

    @property
    def terms(self) -> tuple[str, ...]:
        """Every term, by name: zones, numeric columns, factors."""
        return (*self.zones, *self.numeric, *(f.name for f in self.factors))

    @property
    def levels(self) -> int:
        """One-hot levels of the factors, together."""
        return sum(f.levels for f in self.factors)

    def offsets(self) -> tuple[int, ...]:
        """Each factor's first level among :attr:`levels`."""
        return tuple(int(o) for o in np.cumsum([0, *(f.levels for f in self.factors)])[:-1])

    def columns(self) -> tuple[str, ...]:
        """Canonical columns to read from a month file."""
        binned = [c for f in self.factors for c in f.columns]
        return REQUIRED + tuple(dict.fromkeys(c for c in (*self.numeric, *binned) if c not in REQUIRED))

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"numeric": list(self.numeric), "min_minutes": self.min_minutes, "max_minutes": self.max_minutes}
        if self.zones != ZONE_TERMS or self.factors:  # the seed's spec keeps the layout older files (and cache keys) have
            out["terms"] = list(self.terms)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        low, high = float(data["min_minutes"]), float(data["max_minutes"])
        if "terms" in data:
            return cls.of([str(t) for t in data["terms"]], low, high)
        return cls(numeric=tuple(str(c) for c in data["numeric"]), min_minutes=low, max_minutes=high)


def clip_to_window(minutes: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Predictions within the duration window the model was trained on, in place; one that overflowed stays non-finite
    (NaN), so a caller can tell it from a saturated one."""
    finite = np.isfinite(minutes)
    np.clip(minutes, spec.min_minutes, spec.max_minutes, out=minutes)
    if not finite.all():
        minutes[~finite] = np.nan
    return minutes


def factor_codes(table: pa.Table, spec: FeatureSpec) -> np.ndarray:
    """Each row's level of each factor, offset into the spec's levels: (rows, factors) int32 (at most 2,048 levels)."""
    out = np.empty((table.num_rows, len(spec.factors)), dtype=np.int32)
    if not spec.factors:
        return out
    values = {c: _floats(table.column(c)) for f in spec.factors for c in f.columns}
    timed = any(f.timed for f in spec.factors)  # else the table may have no pickup time (a request to the service)
    pickup = _integers(table.column(PICKUP), 0) if timed else np.zeros(0, dtype=np.int64)
    for j, (factor, offset) in enumerate(zip(spec.factors, spec.offsets())):
        code = None
        for part in factor.parts:
            codes = part.codes(pickup) if isinstance(part, Clock) else part.codes(values[part.column])
            if code is None:
                code = codes
            else:
                code *= part.levels
                code += codes
        assert code is not None  # a factor has a part
        code += offset
        out[:, j] = code
    return out


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric column as float64, nulls as 0, in Arrow's memory (no NumPy copy of a month's column)."""
    values = pc.fill_null(column.cast(pa.float64()), 0.0)
    return np.asarray(values.chunk(0) if values.num_chunks == 1 else values.combine_chunks())


@dataclass(frozen=True)
class Encoded:
    """Kept rows of one chunk: pair codes, target minutes, numeric matrix, positions."""

    pair: np.ndarray  # int64, pu * N_ZONES + do
    micros: np.ndarray  # int64 duration in microseconds: exact, so sums are too
    x: np.ndarray  # float64 (rows, len(spec.numeric))
    position: np.ndarray  # int64 row index within the chunk, for fold hashing
    screened: np.ndarray = field(default_factory=lambda: np.zeros(len(SCREENED), dtype=np.int64))  # counts named by SCREENED

    @property
    def rows(self) -> int:
        return int(self.micros.shape[0])

    @property
    def y(self) -> np.ndarray:
        """Duration in minutes, the target."""
        return self.micros / MICROS_PER_MINUTE


def _integers(column: pa.ChunkedArray, fill: int) -> np.ndarray:
    """An integer or timestamp column as NumPy integers in its own width, nulls as ``fill``.

    A single chunk without nulls is a view of Arrow's buffer: the hot path copies no column.
    """
    if column.null_count:
        column = pc.fill_null(column, fill)
    values = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    array: np.ndarray = values.to_numpy(zero_copy_only=False)
    return array.view(np.int64) if array.dtype.kind == "M" else array


def _int64(column: pa.ChunkedArray, fill: int) -> np.ndarray:
    return _integers(column.cast(pa.int64()), fill)


def _known(ids: np.ndarray) -> np.ndarray:
    """Zone ids in 1..265, in one unsigned comparison: ``id - 1`` wraps below 0 to a huge value."""
    return (ids - 1).view(f"u{ids.itemsize}") < N_ZONES - 1


def zone_codes(column: pa.ChunkedArray) -> np.ndarray:
    """Zone ids as int64 codes; nulls and ids outside 1..265 become -1."""
    codes = _int64(column, -1)
    return np.where(_known(codes), codes, -1)


def numeric_matrix(table: pa.Table, names: tuple[str, ...]) -> np.ndarray:
    """Numeric feature columns as a float64 matrix; nulls count as 0."""
    if not names:
        return np.empty((table.num_rows, 0))
    return np.column_stack([_floats(table.column(n)) for n in names])


def valid_all(table: pa.Table) -> bool:
    """Whether every row has both timestamps."""
    return not (table.column(PICKUP).null_count or table.column(DROPOFF).null_count)


def duration_micros(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Trip duration in microseconds and whether both timestamps are present."""
    pick, drop = table.column(PICKUP), table.column(DROPOFF)
    valid = np.ones(table.num_rows, dtype=bool)
    if not valid_all(table):
        valid = pc.and_(pc.is_valid(pick), pc.is_valid(drop)).to_numpy(zero_copy_only=False)
    return _integers(drop, 0) - _integers(pick, 0), valid


_INT64 = (-(1 << 63), (1 << 63) - 1)


def _first(holds: Callable[[int], bool]) -> int | None:
    """The least int64 for which the monotone (False, then True) ``holds`` is true; None if none is."""
    low, high = _INT64
    if not holds(high):
        return None
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if holds(middle) else (middle + 1, high)
    return low


def duration_window(spec: FeatureSpec) -> tuple[int, int]:
    """The integer microseconds ``[low, high]`` whose minutes the seed keeps (empty when ``low > high``).

    The seed compares ``micros / 60e6`` with float bounds; that quotient rises with
    ``micros``, so the same rows are two integer comparisons away, with no
    float column made. Found by bisection, so it is exact for any bound.
    """
    low = _first(lambda micros: micros / MICROS_PER_MINUTE >= spec.min_minutes)
    above = _first(lambda micros: micros / MICROS_PER_MINUTE > spec.max_minutes)
    if low is None:
        return 0, -1
    return low, _INT64[1] if above is None else above - 1


def _in_window(micros: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """``low <= micros <= high`` in one unsigned comparison (the subtraction wraps)."""
    low, high = window
    if low > high:
        return np.zeros(micros.shape, dtype=bool)
    return (micros - low).view(np.uint64) <= np.uint64(high - low)


@dataclass(frozen=True)
class TrainingRows:
    """Every row of a chunk: zone codes (-1: unknown), duration, and whether the training filter keeps it."""

    pu: np.ndarray
    do: np.ndarray
    micros: np.ndarray  # 0 where a timestamp is null
    valid: np.ndarray  # both timestamps present
    keep: np.ndarray  # valid, duration in [min, max] minutes, both zones known


def training_rows(table: pa.Table, spec: FeatureSpec) -> TrainingRows:
    """The one place that says which rows training keeps: scoring flags the same rows (:func:`encode` keeps them too)."""
    micros, valid = duration_micros(table)
    pu = zone_codes(table.column(PU))
    do = zone_codes(table.column(DO))
    keep = valid & _in_window(micros, duration_window(spec)) & (pu >= 0) & (do >= 0)
    return TrainingRows(pu, do, micros, valid, keep)


def _month_span(month: Month | None) -> tuple[int, int] | None:
    """The timestamps a ``month`` file may hold, in µs, inclusive: the month widened by a day on each side."""
    if month is None:
        return None
    low = int(np.datetime64(f"{month}-01", "us").astype(np.int64)) - MICROS_PER_DAY
    high = int(np.datetime64(f"{month.next()}-01", "us").astype(np.int64)) + MICROS_PER_DAY
    return low, high - 1


@dataclass(frozen=True)
class _Block:
    """The columns of a run of rows, as :func:`encode` reads them."""

    pick: np.ndarray  # µs, 0 where null
    drop: np.ndarray
    pu: np.ndarray  # zone ids in their stored width, 0 where null
    do: np.ndarray
    valid: np.ndarray | None  # both timestamps present; None: all rows

    def slice(self, start: int, stop: int) -> _Block:
        valid = None if self.valid is None else self.valid[start:stop]
        return _Block(self.pick[start:stop], self.drop[start:stop], self.pu[start:stop], self.do[start:stop], valid)

    def zones_known(self) -> bool:
        """Whether every zone id is in 1..265 (a null reads as 0): four reductions, where the masks take five passes."""
        return bool(self.pu.min() >= 1 and self.pu.max() < N_ZONES and self.do.min() >= 1 and self.do.max() < N_ZONES)

    def times_in(self, span: tuple[int, int] | None) -> bool:
        """Whether every timestamp is present and in ``span``: four reductions, no temporaries."""
        if span is None or not self.pick.size:
            return self.valid is None
        low, high = span
        in_span = low <= self.pick.min() and self.pick.max() <= high and low <= self.drop.min() and self.drop.max() <= high
        return self.valid is None and bool(in_span)


def _odd_times(block: _Block, micros: np.ndarray, span: tuple[int, int] | None) -> np.ndarray:
    """Which rows have timestamps out of range (see :func:`encode`)."""
    odd = micros < 0
    if block.valid is not None:
        odd |= ~block.valid
    if span is not None:
        for stamps in (block.pick, block.drop):
            odd |= ~_in_window(stamps, span)
    return odd


#: Rows per block of :func:`encode`: a block's temporaries stay in cache and reuse the memory the
#: previous block freed, where whole-chunk temporaries cost fresh pages (3x the time of a NumPy pass here).
BLOCK_ROWS = 1 << 16


@dataclass(frozen=True)
class Screened:
    """One block of a chunk, screened: every row's pair code and duration, which rows the filter keeps, and its counts.

    ``codes`` and ``micros`` mean something only where ``keep`` holds: :func:`encode`
    gathers those rows, :func:`pipeline.core.stats.compute_screened` masks the rest.
    The arrays are buffers that :func:`screen` refills for its next block: use a
    block before asking for the next.
    """

    start: int  # the block's first row in the chunk
    keep: np.ndarray  # bool
    codes: np.ndarray  # pu * N_ZONES + do, at least int32 (a kept row's code is below 266²)
    micros: np.ndarray  # int64 duration
    counts: np.ndarray  # int64, named by SCREENED
    longest: int  # no kept row's |micros| is larger (from the duration window)

    @property
    def rows(self) -> int:
        return int(self.keep.size)


@dataclass(frozen=True)
class _Buffers:
    """Block-sized outputs and scratch that :func:`screen` reuses, so a block's temporaries stay in cache and cost no
    fresh pages (:mod:`pipeline.core.buffers`)."""

    micros: np.ndarray
    codes: np.ndarray
    keep: np.ndarray
    known: np.ndarray
    wide: np.ndarray  # int64 scratch
    ids: np.ndarray  # scratch in the ids' width

    @classmethod
    def of(cls, rows: int, ids: np.dtype) -> _Buffers:
        wide = np.promote_types(ids, np.int32)
        kinds = (np.int64, wide, np.bool_, np.bool_, np.int64, ids)
        return cls(*(buffers.empty(rows, kind) for kind in kinds))

    def head(self, rows: int) -> _Buffers:
        return _Buffers(self.micros[:rows], self.codes[:rows], self.keep[:rows], self.known[:rows], self.wide[:rows], self.ids[:rows])


def _known_into(ids: np.ndarray, scratch: np.ndarray, out: np.ndarray) -> np.ndarray:
    """:func:`_known` written into ``out``."""
    np.subtract(ids, 1, out=scratch, dtype=scratch.dtype)
    np.less(scratch.view(f"u{scratch.itemsize}"), N_ZONES - 1, out=out)
    return out


def _screen_block(start: int, block: _Block, window: tuple[int, int], span: tuple[int, int] | None, work: _Buffers) -> Screened:
    """One block of :func:`screen`, in ``work``."""
    low, high = window
    micros = np.subtract(block.drop, block.pick, out=work.micros)
    known = None  # every zone known
    if not block.zones_known():
        known = _known_into(block.pu, work.ids, work.known)
        known &= _known_into(block.do, work.ids, work.keep)
    keep = work.keep
    if low > high:
        keep.fill(False)
    else:  # _in_window, written into the buffers
        np.subtract(micros, low, out=work.wide)
        np.less_equal(work.wide.view(np.uint64), np.uint64(high - low), out=keep)
    if known is not None:
        keep &= known
    if block.valid is not None:
        keep &= block.valid
    codes = np.multiply(block.pu, N_ZONES, out=work.codes, dtype=work.codes.dtype)
    codes += block.do
    n_known = micros.size if known is None else int(np.count_nonzero(known))
    kept = int(np.count_nonzero(keep))
    # dropped_by_duration: rows whose zones and timestamps are all good, outside the window (the rest have counts of their own)
    if block.times_in(span):  # only a dropoff before its pickup can be odd; checked by block, while it is in cache
        odd = micros < 0 if micros.size and micros.min() < 0 else None
    else:
        odd = _odd_times(block, micros, span)
    if odd is None:  # every timestamp good
        n_odd, n_good, kept_good = 0, n_known, kept
    else:
        n_odd = int(np.count_nonzero(odd))
        good = ~odd if known is None else known & ~odd  # ~odd implies a valid (non-null) timestamp
        n_good, kept_good = int(np.count_nonzero(good)), int(np.count_nonzero(keep & good))
    counts = np.array([micros.size, n_good - kept_good, n_odd, micros.size - n_known], dtype=np.int64)
    return Screened(start, keep, codes, micros, counts, max(-low, high, 0))


def screen(table: pa.Table, spec: FeatureSpec, month: Month | None = None) -> Iterator[Screened]:
    """A normalised chunk by cache-sized blocks, screened as :func:`encode` describes.

    Columns are views of Arrow's buffers in their stored widths, filters are
    integer comparisons, and every block is worked out in the same buffers.
    """
    whole = _Block(
        _integers(table.column(PICKUP), 0),
        _integers(table.column(DROPOFF), 0),
        _integers(table.column(PU), 0),
        _integers(table.column(DO), 0),
        None if valid_all(table) else duration_micros(table)[1],
    )
    window, span = duration_window(spec), _month_span(month)
    work = _Buffers.of(min(BLOCK_ROWS, table.num_rows), np.promote_types(whole.pu.dtype, whole.do.dtype))
    for start in range(0, table.num_rows, BLOCK_ROWS):
        block = whole.slice(start, start + BLOCK_ROWS)
        yield _screen_block(start, block, window, span, work.head(block.pick.size))


def encode(table: pa.Table, spec: FeatureSpec, month: Month | None = None, offset: int = 0) -> Encoded:
    """Encode a normalised chunk, keeping the seed's rows: duration in [min, max] minutes.

    Rows with a null timestamp or a zone id outside 1..265 are dropped as well
    (real TLC files have none; DictVectorizer would choke on them). The rows read
    and dropped are counted, named by :data:`SCREENED`, so damage that decodes
    silently shows up: a timestamp is out of range when null, when the dropoff
    precedes the pickup, or (given the file's ``month``) when either lies outside
    the month widened by a day on each side. ``position`` counts from ``offset``.

    The kept rows of each :func:`screen` block are copied into outputs sized once for the chunk.
    """
    pair, micros, position = (np.empty(table.num_rows, dtype=np.int64) for _ in range(3))
    screened, kept = np.zeros(len(SCREENED), dtype=np.int64), 0
    for block in screen(table, spec, month):
        rows = np.flatnonzero(block.keep)
        stop = kept + rows.size
        pair[kept:stop], micros[kept:stop] = block.codes[rows], block.micros[rows]
        np.add(rows, block.start + offset, out=position[kept:stop])
        screened += block.counts
        kept = stop
    x = numeric_matrix(table, spec.numeric)[position[:kept] - offset] if spec.numeric else np.empty((kept, 0))
    return Encoded(pair=pair[:kept], micros=micros[:kept], x=x, position=position[:kept], screened=screened)
