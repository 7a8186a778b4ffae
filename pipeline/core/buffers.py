"""Scratch arrays from Arrow's memory pool, for the hot path's temporaries.

NumPy takes large arrays from glibc, which hands freed pages back to the OS, so
the next chunk's arrays fault in every page afresh (~2 µs a page here: 40% of the
kernel's time). Arrow's pool (mimalloc) keeps freed pages for the next request,
as the parquet decode beside the kernel does.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def empty(rows: int, dtype: type[np.generic] | np.dtype) -> np.ndarray:
    """An uninitialised, writable 1-d array of ``rows`` items in Arrow's memory pool."""
    kind = np.dtype(dtype)
    return np.frombuffer(pa.allocate_buffer(rows * kind.itemsize), dtype=kind)
