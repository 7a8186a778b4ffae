"""Month lists such as ``2023-01,2023-03`` and ranges such as ``2023-01:2023-06``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.errors import PipelineError

_MONTH = re.compile(r"^(\d{4})-(\d{2})$", re.ASCII)  # ASCII digits only: "２０２３-０１" is not a month


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month; ``str(Month(2023, 1)) == "2023-01"``."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12 or not 2000 <= self.year <= 2100:
            raise PipelineError(f"invalid month {self.year:04d}-{self.month:02d}")

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @classmethod
    def parse(cls, text: str) -> Month:
        """Parse ``YYYY-MM``; anything else is a :class:`PipelineError`."""
        match = _MONTH.match(text.strip())
        if not match:
            raise PipelineError(f"invalid month {text.strip()!r}: expected YYYY-MM")
        return cls(int(match[1]), int(match[2]))

    def previous(self) -> Month:
        """The month before this one."""
        if self.month == 1:
            return Month(self.year - 1, 12)
        return Month(self.year, self.month - 1)

    def shift(self, months: int) -> Month:
        """``months`` later (earlier when negative).

        >>> str(Month(2023, 2).shift(-3))
        '2022-11'
        """
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    def next(self) -> Month:
        """The month after this one."""
        if self.month == 12:
            return Month(self.year + 1, 1)
        return Month(self.year, self.month + 1)


def parse_months(spec: str) -> list[Month]:
    """Parse ``A,B`` lists and ``A:B`` inclusive ranges (mixable), sorted and unique.

    >>> [str(m) for m in parse_months("2023-11:2024-01,2023-03")]
    ['2023-03', '2023-11', '2023-12', '2024-01']
    """
    months: set[Month] = set()
    parts = [p for p in spec.split(",") if p.strip()]
    if not parts:
        raise PipelineError("empty month list")
    for part in parts:
        if ":" in part:
            first_text, _, last_text = part.partition(":")
            first, last = Month.parse(first_text), Month.parse(last_text)
            if last < first:
                raise PipelineError(f"range {part.strip()!r} ends before it starts")
            current = first
            months.add(current)
            while current < last:  # never steps past ``last``: a range may end at the last valid month
                current = current.next()
                months.add(current)
        else:
            months.add(Month.parse(part))
    return sorted(months)


def format_months(months: Iterable[Month]) -> str:
    """The inverse of :func:`parse_months`: runs of three or more months as ``A:B``, others listed.

    >>> format_months(parse_months("2023-01:2023-04,2023-06,2023-08:2023-09"))
    '2023-01:2023-04,2023-06,2023-08,2023-09'
    """
    runs: list[list[Month]] = []
    for month in sorted(set(months)):
        if runs and runs[-1][-1].next() == month:
            runs[-1].append(month)
        else:
            runs.append([month])
    parts = [f"{run[0]}:{run[-1]}" if len(run) >= 3 else ",".join(map(str, run)) for run in runs]
    return ",".join(parts)
