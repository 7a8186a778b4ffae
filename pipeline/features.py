"""Seed-equivalent features, straight to integer codes: no strings, no dicts.

The seed one-hot encodes ``PULocationID``, ``DOLocationID`` and ``PU_DO`` through
``DictVectorizer``. Here a row becomes one pair code ``pu * N_ZONES + do``: the
pickup and dropoff one-hots are recoverable from it, so a pair code carries all
three one-hot features. Numeric columns (``trip_distance``...) ride along as floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import DO, DROPOFF, PICKUP, PU, REQUIRED

#: Zone ids are 1..265 (264 and 265 are TLC's "unknown"); code 0 stays unused.
N_ZONES = 266
N_PAIRS = N_ZONES * N_ZONES
_MICROS_PER_MINUTE = 60_000_000


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
    def from_dict(cls, data: dict[str, object]) -> FeatureSpec:
        return cls(
            numeric=tuple(str(c) for c in data["numeric"]),  # type: ignore[union-attr]
            min_minutes=float(data["min_minutes"]),  # type: ignore[arg-type]
            max_minutes=float(data["max_minutes"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Encoded:
    """Kept rows of one chunk: pair codes, target minutes, numeric matrix, positions."""

    pair: np.ndarray  # int64, pu * N_ZONES + do
    y: np.ndarray  # float64 duration in minutes
    x: np.ndarray  # float64 (rows, len(spec.numeric))
    position: np.ndarray  # int64 row index within the chunk, for fold hashing

    @property
    def rows(self) -> int:
        return int(self.y.shape[0])


def _int64(column: pa.ChunkedArray, fill: int) -> np.ndarray:
    return pc.fill_null(column.cast(pa.int64()), fill).to_numpy()


def zone_codes(column: pa.ChunkedArray) -> np.ndarray:
    """Zone ids as int64 codes; nulls and ids outside 1..265 become -1."""
    codes = _int64(column, -1)
    return np.where((codes >= 1) & (codes < N_ZONES), codes, -1)


def numeric_matrix(table: pa.Table, names: tuple[str, ...]) -> np.ndarray:
    """Numeric feature columns as a float64 matrix; nulls count as 0."""
    if not names:
        return np.empty((table.num_rows, 0))
    return np.column_stack([pc.fill_null(table.column(n).cast(pa.float64()), 0.0).to_numpy() for n in names])


def minutes(table: pa.Table) -> np.ndarray:
    """Trip duration in minutes (NaN where a timestamp is null)."""
    pick = table.column(PICKUP).cast(pa.int64()).to_numpy(zero_copy_only=False)
    drop = table.column(DROPOFF).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return (drop - pick) / _MICROS_PER_MINUTE


def encode(table: pa.Table, spec: FeatureSpec) -> Encoded:
    """Encode a normalised chunk, keeping the seed's rows: duration in [min, max] minutes.

    Rows with a null timestamp or a zone id outside 1..265 are dropped as well
    (real TLC files have none; DictVectorizer would choke on them).
    """
    y = minutes(table)
    pu = zone_codes(table.column(PU))
    do = zone_codes(table.column(DO))
    keep = (y >= spec.min_minutes) & (y <= spec.max_minutes) & (pu >= 0) & (do >= 0)
    position = np.flatnonzero(keep)
    x = numeric_matrix(table, spec.numeric)[position]
    return Encoded(pair=pu[position] * N_ZONES + do[position], y=y[position], x=x, position=position)
