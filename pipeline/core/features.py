"""Seed-equivalent features, straight to integer codes: no strings, no dicts.

The seed one-hot encodes ``PULocationID``, ``DOLocationID`` and ``PU_DO`` through
``DictVectorizer``. Here a row becomes one pair code ``pu * N_ZONES + do``: the
pickup and dropoff one-hots are recoverable from it, so a pair code carries all
three one-hot features. Numeric columns (``trip_distance``...) ride along as floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.months import Month
from pipeline.core.schema import DO, DROPOFF, PICKUP, PU, REQUIRED

#: Zone ids are 1..265 (264 and 265 are TLC's "unknown"); code 0 stays unused.
N_ZONES = 266
N_PAIRS = N_ZONES * N_ZONES
MICROS_PER_MINUTE = 60_000_000
MICROS_PER_DAY = 86_400_000_000
#: What :func:`encode` counts in a chunk, in the order of ``Encoded.screened``. The last three
#: may overlap (a dropoff before its pickup is also outside the duration window).
SCREENED = ("rows_read", "dropped_by_duration", "out_of_range_timestamps", "out_of_range_zones")


@dataclass(frozen=True)
class FeatureSpec:
    """What a model sees: the duration window kept and any numeric columns."""

    numeric: tuple[str, ...] = ()
    min_minutes: float = 1.0
    max_minutes: float = 60.0

    def columns(self) -> tuple[str, ...]:
        """Canonical columns to read from a month file."""
        return REQUIRED + tuple(c for c in self.numeric if c not in REQUIRED)

    def to_dict(self) -> dict[str, object]:
        return {"numeric": list(self.numeric), "min_minutes": self.min_minutes, "max_minutes": self.max_minutes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            numeric=tuple(str(c) for c in data["numeric"]),
            min_minutes=float(data["min_minutes"]),
            max_minutes=float(data["max_minutes"]),
        )


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


def _int64(column: pa.ChunkedArray, fill: int) -> np.ndarray:
    return np.asarray(pc.fill_null(column.cast(pa.int64()), fill).to_numpy())


def zone_codes(column: pa.ChunkedArray) -> np.ndarray:
    """Zone ids as int64 codes; nulls and ids outside 1..265 become -1."""
    codes = _int64(column, -1)
    return np.where((codes >= 1) & (codes < N_ZONES), codes, -1)


def numeric_matrix(table: pa.Table, names: tuple[str, ...]) -> np.ndarray:
    """Numeric feature columns as a float64 matrix; nulls count as 0."""
    if not names:
        return np.empty((table.num_rows, 0))
    return np.column_stack([pc.fill_null(table.column(n).cast(pa.float64()), 0.0).to_numpy() for n in names])


def duration_micros(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Trip duration in microseconds and whether both timestamps are present."""
    pick, drop = table.column(PICKUP), table.column(DROPOFF)
    valid = np.ones(table.num_rows, dtype=bool)
    if pick.null_count or drop.null_count:
        valid = pc.and_(pc.is_valid(pick), pc.is_valid(drop)).to_numpy(zero_copy_only=False)
    return _int64(drop, 0) - _int64(pick, 0), valid


@dataclass(frozen=True)
class TrainingRows:
    """Every row of a chunk: zone codes (-1: unknown), duration, and whether the training filter keeps it."""

    pu: np.ndarray
    do: np.ndarray
    micros: np.ndarray  # 0 where a timestamp is null
    valid: np.ndarray  # both timestamps present
    keep: np.ndarray  # valid, duration in [min, max] minutes, both zones known


def training_rows(table: pa.Table, spec: FeatureSpec) -> TrainingRows:
    """The one place that says which rows training keeps: scoring flags the same rows."""
    micros, valid = duration_micros(table)
    minutes = micros / MICROS_PER_MINUTE  # the seed's comparison, in the seed's unit
    pu = zone_codes(table.column(PU))
    do = zone_codes(table.column(DO))
    keep = valid & (minutes >= spec.min_minutes) & (minutes <= spec.max_minutes) & (pu >= 0) & (do >= 0)
    return TrainingRows(pu, do, micros, valid, keep)


def screen(table: pa.Table, rows: TrainingRows, month: Month | None = None) -> np.ndarray:
    """The chunk's row accounting, named by :data:`SCREENED`, so damage that decodes silently shows up.

    A timestamp is out of range when null, when the dropoff precedes the pickup,
    or (given the file's ``month``) when either lies outside the month widened by
    a day on each side: garbage decoded from a damaged page almost surely does.
    """
    known = (rows.pu >= 0) & (rows.do >= 0)
    odd_time = ~rows.valid | (rows.micros < 0)
    if month is not None:
        low = int(np.datetime64(f"{month}-01", "us").astype(np.int64)) - MICROS_PER_DAY
        high = int(np.datetime64(f"{month.next()}-01", "us").astype(np.int64)) + MICROS_PER_DAY
        for name in (PICKUP, DROPOFF):
            stamp = _int64(table.column(name), low)
            odd_time |= (stamp < low) | (stamp >= high)
    counts = (table.num_rows, np.count_nonzero(rows.valid & known & ~rows.keep), np.count_nonzero(odd_time), np.count_nonzero(~known))
    return np.array(counts, dtype=np.int64)


def encode(table: pa.Table, spec: FeatureSpec, month: Month | None = None) -> Encoded:
    """Encode a normalised chunk, keeping the seed's rows: duration in [min, max] minutes.

    Rows with a null timestamp or a zone id outside 1..265 are dropped as well
    (real TLC files have none; DictVectorizer would choke on them). The rows
    read and dropped are counted (:func:`screen`; ``month``: the file's).
    """
    rows = training_rows(table, spec)
    micros, pu, do = rows.micros, rows.pu, rows.do
    position = np.flatnonzero(rows.keep)
    x = numeric_matrix(table, spec.numeric)[position]
    pair = pu[position] * N_ZONES + do[position]
    return Encoded(pair=pair, micros=micros[position], x=x, position=position, screened=screen(table, rows, month))
