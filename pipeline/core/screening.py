"""Rows read and dropped per month, and the rule that calls a month's drop rate unusual.

A file without page checksums can decode a damaged page silently: its timestamps
turn to garbage, and those rows are dropped as out of range (not counted by the
duration filter, which counts only rows whose timestamps and zones are good). What
gives it away is the month's drop rate next to the other months'. Real TLC months
drop 1.5-2.5% of their rows (2023-01 keeps 98.12%), so a month is unusual when it
drops more than :data:`RATIO` times the median of the run's other months *and*
at least :data:`MARGIN` (one percentage point) more: the ratio ignores months
that are all alike, the margin ignores noise when the median is tiny.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any

from pipeline.core.features import SCREENED
from pipeline.core.months import Month
from pipeline.core.stats import Part

RATIO = 3.0
MARGIN = 0.01


@dataclass(frozen=True)
class MonthRows:
    """One month's row accounting (timestamps and zones may both be bad in a row: see :data:`SCREENED`)."""

    month: Month
    rows_read: int
    rows_kept: int
    dropped_by_duration: int
    out_of_range_timestamps: int
    out_of_range_zones: int

    @property
    def drop_rate(self) -> float:
        """Share of the rows read that training did not keep."""
        return 1.0 - self.rows_kept / self.rows_read if self.rows_read else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "month": str(self.month), "drop_rate": self.drop_rate}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MonthRows:
        counts = {name: int(data[name]) for name in (*SCREENED, "rows_kept")}
        return cls(Month.parse(data["month"]), **counts)


def of(months: Sequence[Month], stats: Sequence[Part]) -> tuple[MonthRows, ...]:
    """Each month's accounting from its statistics (all folds): a few ints each, whatever the data size."""
    counted = []
    for month, month_stats in zip(months, stats, strict=True):
        read, duration, timestamps, zones = (int(v) for v in month_stats.screened)
        counted.append(MonthRows(month, read, month_stats.rows, duration, timestamps, zones))
    return tuple(counted)


@dataclass(frozen=True)
class Unusual:
    """A month whose drop rate stands out, and the median rate of the others."""

    month: MonthRows
    others_median: float


def unusual(months: Sequence[MonthRows]) -> list[Unusual]:
    """Months dropping more than ``RATIO`` x the others' median rate and ``MARGIN`` above it."""
    found = []
    for index, month in enumerate(months):
        others = [m.drop_rate for i, m in enumerate(months) if i != index]
        if not others:
            continue
        typical = median(others)
        if month.drop_rate > RATIO * typical and month.drop_rate > typical + MARGIN:
            found.append(Unusual(month, typical))
    return found
