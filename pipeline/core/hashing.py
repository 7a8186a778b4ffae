"""Row hashes that decide folds and samples: a function of where a row is, never of how it was read.

A splitmix64 of (month salt, row position in its month file, seed, stream):
the same row gets the same fold and the same sample key whatever the chunking,
the worker or the order of reads. Streams keep the fold assignment and the
subsample independent of each other.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.months import Month

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
#: The fold stream is 0; the subsample of row-fitted estimators uses this one.
SAMPLE_STREAM = 0xD1B54A32D192ED03


def month_salt(month: Month) -> int:
    """Tells months apart, so row 0 of each month gets its own fold.

    >>> month_salt(Month(2023, 2)) - month_salt(Month(2023, 1))
    1
    """
    return month.year * 12 + month.month


def row_hash(position: np.ndarray, salt: int, seed: int, stream: int = 0) -> np.ndarray:
    """uint64 splitmix64 of (``salt``, ``position``, ``seed``, ``stream``), one per row."""
    z = (np.uint64(salt) << np.uint64(40)) ^ position.astype(np.uint64)
    z = z + np.uint64((seed * _GOLDEN + stream) & _MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def fold_of(position: np.ndarray, salt: int, seed: int, folds: int) -> np.ndarray:
    """Deterministic fold (int64 in ``[0, folds)``) of each row from its position in the month file."""
    return (row_hash(position, salt, seed) % np.uint64(folds)).astype(np.int64)


def sample_key(position: np.ndarray, salt: int, seed: int) -> np.ndarray:
    """A uint64 key per row on its own stream: keeping the smallest keys is a uniform sample."""
    return row_hash(position, salt, seed, SAMPLE_STREAM)
