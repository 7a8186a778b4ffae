"""Row hashes that decide folds and samples: a function of where a row is, never of how it was read.

A splitmix64 of (month salt, row position in its month file, seed, stream):
the same row gets the same fold and the same sample key whatever the chunking,
the worker or the order of reads. Streams keep the fold assignment and the
subsample independent of each other.
"""

from __future__ import annotations

from collections.abc import Iterator

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


#: Rows hashed per pass: a block's scratch stays in cache, and a chunk allocates its output alone
#: (the whole-array version made ~8 chunk-sized temporaries: 3x slower, and page faults on a new worker).
_BLOCK = 1 << 16
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))
_MULTIPLIERS = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _hash_blocks(position: np.ndarray, salt: int, seed: int, stream: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Each block of rows, its splitmix64 hashes and a scratch array of the same size (both reused)."""
    high = np.uint64(salt) << np.uint64(40)
    offset = np.uint64((seed * _GOLDEN + stream) & _MASK64)
    z, scratch = np.empty(min(_BLOCK, position.size), np.uint64), np.empty(min(_BLOCK, position.size), np.uint64)
    for start in range(0, position.size, _BLOCK):
        rows = slice(start, min(start + _BLOCK, position.size))
        h, t = z[: rows.stop - start], scratch[: rows.stop - start]
        h[...] = position[rows]  # as astype(np.uint64)
        h ^= high
        h += offset
        for shift, multiplier in zip(_SHIFTS, (*_MULTIPLIERS, None)):
            np.right_shift(h, shift, out=t)
            h ^= t
            if multiplier is not None:
                h *= multiplier
        yield rows, h, t


def row_hash(position: np.ndarray, salt: int, seed: int, stream: int = 0) -> np.ndarray:
    """uint64 splitmix64 of (``salt``, ``position``, ``seed``, ``stream``), one per row."""
    out = np.empty(position.size, np.uint64)
    for rows, h, _ in _hash_blocks(position, salt, seed, stream):
        out[rows] = h
    return out


def fold_of(position: np.ndarray, salt: int, seed: int, folds: int) -> np.ndarray:
    """Deterministic fold (int64 in ``[0, folds)``) of each row from its position in the month file: hash mod ``folds``."""
    out = np.empty(position.size, np.int64)
    divisor = np.uint64(folds)
    for rows, h, t in _hash_blocks(position, salt, seed, 0):
        np.floor_divide(h, divisor, out=t)  # a division by a constant (libdivide): 5x faster than np.remainder
        t *= divisor
        h -= t
        out[rows] = h
    return out


def sample_key(position: np.ndarray, salt: int, seed: int) -> np.ndarray:
    """A uint64 key per row on its own stream: keeping the smallest keys is a uniform sample."""
    return row_hash(position, salt, seed, SAMPLE_STREAM)
