"""The training months' trip mix, saved beside a model: the baseline that drift monitoring compares months with.

``train_counts.npz`` holds one int64 array, ``pair_count``: training trips per
pickup-dropoff pair code (the statistics' own counts, so it costs nothing to
keep). A model without it (an older one, or a row-fitted one) is scored
without drift figures.
"""

from __future__ import annotations

import io

import numpy as np

from pipeline.core.features import N_PAIRS
from pipeline.edge import storage
from pipeline.edge.storage import Where
from pipeline.errors import PipelineError

COUNTS_FILE = "train_counts.npz"


def train_counts_bytes(pair_count: np.ndarray) -> bytes:
    """The ``train_counts.npz`` of a run's pair counts."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, pair_count=np.asarray(pair_count, dtype=np.int64))
    return buffer.getvalue()


def save_train_counts(pair_count: np.ndarray, directory: Where) -> None:
    """Write ``train_counts.npz`` whole (atomically locally)."""
    storage.put(storage.locate(directory).child(COUNTS_FILE), train_counts_bytes(pair_count))


def load_train_counts(directory: Where) -> np.ndarray | None:
    """The model's training pair counts, or None when it has none; a damaged file is one PipelineError."""
    path = storage.locate(directory).child(COUNTS_FILE)
    try:
        with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as arrays:
            counts = np.asarray(arrays["pair_count"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"{path}: not readable training counts ({exc})") from None
    if counts.shape != (N_PAIRS,) or counts.dtype != np.int64 or (counts < 0).any():
        raise PipelineError(f"{path}: pair_count has shape {counts.shape} and dtype {counts.dtype}, expected ({N_PAIRS},) int64 >= 0")
    return counts
