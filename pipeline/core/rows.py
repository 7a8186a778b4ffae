"""Kept trips as plain arrays, for estimators that fit on rows rather than on statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rows:
    """Kept rows as arrays: zone codes, numeric features, minutes and fold ids."""

    pu: np.ndarray  # int64 pickup zone codes, 1..265
    do: np.ndarray  # int64 dropoff zone codes, 1..265
    x: np.ndarray  # float64 (n, k), the spec's numeric columns
    y: np.ndarray  # float64 duration in minutes
    fold: np.ndarray  # int64 fold ids (all 0 without cross-validation)

    @property
    def rows(self) -> int:
        return int(self.y.shape[0])

    def select(self, mask: np.ndarray) -> Rows:
        """The rows where ``mask`` holds (or at the given indices)."""
        return Rows(self.pu[mask], self.do[mask], self.x[mask], self.y[mask], self.fold[mask])


def concat_rows(parts: list[Rows], k: int) -> Rows:
    """Rows of ``parts`` in order; ``k`` numeric columns when there are none."""
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return Rows(empty, empty, np.empty((0, k)), np.empty(0), empty)
    return Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("pu", "do", "x", "y", "fold")))
