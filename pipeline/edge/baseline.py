"""The training months' trip mix, saved beside a model: the baseline that drift monitoring compares months with.

``train_counts.npz`` holds one int64 array, ``pair_count``: training trips per
pickup-dropoff pair code (the statistics' own counts, so it costs nothing to
keep). A model without it (an older one, or a row-fitted one) is scored
without drift figures.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipeline.core.features import N_PAIRS
from pipeline.edge.atomic import write_bytes
from pipeline.errors import PipelineError

COUNTS_FILE = "train_counts.npz"


def save_train_counts(pair_count: np.ndarray, directory: Path) -> None:
    """Write ``train_counts.npz`` atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, pair_count=np.asarray(pair_count, dtype=np.int64))
    write_bytes(Path(directory) / COUNTS_FILE, lambda fh: fh.write(buffer.getvalue()))


def load_train_counts(directory: Path) -> np.ndarray | None:
    """The model's training pair counts, or None when it has none; a damaged file is one PipelineError."""
    path = Path(directory) / COUNTS_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            counts = np.asarray(arrays["pair_count"])
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"{path}: not readable training counts ({exc})") from None
    if counts.shape != (N_PAIRS,) or counts.dtype != np.int64 or (counts < 0).any():
        raise PipelineError(f"{path}: pair_count has shape {counts.shape} and dtype {counts.dtype}, expected ({N_PAIRS},) int64 >= 0")
    return counts
