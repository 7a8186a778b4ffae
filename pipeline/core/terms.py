"""The feature terms a linear model is built from, parsed from ``--features`` text.

A term is one of:

- a zone term, the seed's one-hots: ``PULocationID``, ``DOLocationID``, ``PU_DO``;
- a numeric column, raw: ``trip_distance`` (any column the month has);
- a *factor*, a small categorical term computed in the chunk kernel from columns
  the month already has, one-hot encoded:

  - a numeric column cut into bins: ``trip_distance:log48`` (48 bins, log-spaced
    edges between 0.1 and 50), ``trip_distance:log24(0.5,40)`` (given ends), or
    ``trip_distance:[1,2,5,10]`` (given edges), or ``trip_distance:q32``: 32 bins of
    about equal counts, edges fixed before the pass from the training rows (a run
    writes them into the term, ``trip_distance:q32[0.6,0.8,...]``, so the model
    file, the statistics cache and the scorer carry them). Values below the first
    edge fall in the first bin and above the last in the last: outliers land in the end bins.
  - the pickup time: ``hour``, ``weekday`` (Monday is 0), ``hour_of_week``, and
    blocks of hours, ``hour/4`` (6 levels) or ``hour_of_week/3``;
  - an interaction of factors, ``trip_distance:log12*hour/4`` (12 × 6 levels), or
    of a zone with a factor, ``PULocationID*hour/4`` (the pickup zone's effect in
    each block of 4 hours: 266 × 6 levels).

Every term stays exact: a factor's one-hots are counted against the pair codes
(:mod:`pipeline.core.stats`), so the model is still solved from additive statistics.
Pure: no I/O.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.core import buffers
from pipeline.errors import PipelineError

#: The seed's one-hots; a model may use any of them.
ZONE_TERMS = ("PULocationID", "DOLocationID", "PU_DO")
#: Default ends of log-spaced bins (``COLUMN:logN``): 0.1 to 50 covers trip miles; outliers go to the end bins.
LOG_RANGE = (0.1, 50.0)
#: Zone ids are 1..265 (264 and 265 are TLC's "unknown"); code 0 stays unused (and takes ids out of range).
N_ZONES = 266
#: At most this many one-hot levels beside the zones: the exact solver's dense block grows with them, and so do the
#: statistics (a level × every pickup-dropoff pair, and levels², per fold). A zone interaction with a block of 4
#: hours (1,596 levels) fits beside 48 distance bins and the 168 hours of the week.
MAX_LEVELS = 2048
MICROS_PER_HOUR = 3_600_000_000
HOURS_PER_DAY = 24
#: 1970-01-01, day 0 of the timestamps, was a Thursday: weekday 3 when Monday is 0.
_EPOCH_WEEKDAY = 3
HOURS_PER_WEEK = 7 * HOURS_PER_DAY
#: Edges within this relative distance of a geometric sequence are cut by a logarithm (then checked against the edges).
_GEOMETRIC = 1e-9

Unit = Literal["hour", "weekday", "hour_of_week"]
_UNIT_LEVELS = {"hour": 24, "weekday": 7, "hour_of_week": 168}


class TermError(PipelineError):
    """A term that cannot be used, named in the message."""


@dataclass(frozen=True)
class Bins:
    """A numeric column cut at increasing ``edges``: ``len(edges) + 1`` levels; nulls count as 0.

    Quantile bins (``quantiles`` > 0) have no edges until a run fixes them (:func:`with_quantile_edges`);
    until then they count as ``quantiles`` levels, the most they can have.
    """

    column: str
    edges: tuple[float, ...]
    label: str  # as written after the colon, for the term's name
    quantiles: int = 0

    @property
    def levels(self) -> int:
        return len(self.edges) + 1 if self.edges else self.quantiles

    @property
    def name(self) -> str:
        return f"{self.column}:{self.label}"

    @property
    def unresolved(self) -> bool:
        return self.quantiles > 0 and not self.edges

    def fixed(self, edges: tuple[float, ...]) -> Bins:
        """These quantile bins with the edges a run measured, named with them (``q32[0.6,0.8,...]``: ``repr`` round-trips)."""
        return Bins(self.column, edges, f"q{self.quantiles}[{','.join(repr(e) for e in edges)}]", self.quantiles)

    def codes(self, values: np.ndarray) -> np.ndarray:
        """Each value's bin, as ``searchsorted(edges, values, side="right")`` gives it (NaN in the last bin), int64."""
        if self.unresolved:
            raise TermError(f"term {self.name!r}: quantile edges are fixed by a run before the pass; none are given")
        edges = np.asarray(self.edges)
        if _geometric(edges):
            return _log_codes(edges, values)
        return np.searchsorted(edges, values, side="right").astype(np.int64)


def _geometric(edges: np.ndarray) -> bool:
    """Whether the edges are (close to) ``e₀ rⁱ`` with ``e₀ > 0`` and ``r > 1``, as ``COLUMN:logN`` makes them."""
    if edges.size < 2 or edges[0] <= 0:
        return False
    ideal = np.geomspace(edges[0], edges[-1], edges.size)
    return bool(np.all(np.abs(edges - ideal) <= _GEOMETRIC * ideal))


def _log_codes(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """:meth:`Bins.codes` of geometric edges from a logarithm, exactly: the estimate is off by at most one bin next to
    an edge (rounding), and one comparison with each neighbouring edge puts it right. Three times faster than a binary
    search over 47 edges, with every temporary in Arrow's pool."""
    n = edges.size
    estimate = buffers.empty(values.size, np.float64)
    np.maximum(values, edges[0] / 2, out=estimate)  # below the first edge (0, negatives, -inf): bin 0; NaN stays NaN
    np.log(estimate, out=estimate)
    estimate -= np.log(edges[0])
    estimate *= (n - 1) / np.log(edges[-1] / edges[0])
    estimate += 1
    np.floor(estimate, out=estimate)
    np.clip(estimate, 0, n, out=estimate)
    np.copyto(estimate, n, where=np.isnan(estimate, out=buffers.empty(values.size, np.bool_)))  # searchsorted puts NaN last
    codes = buffers.empty(values.size, np.int64)
    np.copyto(codes, estimate, casting="unsafe")
    below, above = np.r_[-np.inf, edges], np.r_[edges, np.nan]  # bin c holds below[c] <= v < above[c] (the last: any v)
    bound = np.take(below, codes, out=estimate)
    codes -= np.less(values, bound, out=buffers.empty(values.size, np.bool_))
    bound = np.take(above, codes, out=estimate)
    codes += np.greater_equal(values, bound, out=buffers.empty(values.size, np.bool_))
    return codes


@dataclass(frozen=True)
class Clock:
    """The pickup time as an hour, a weekday or an hour of the week, in blocks of ``block`` hours."""

    unit: Unit
    block: int = 1

    @property
    def levels(self) -> int:
        return _UNIT_LEVELS[self.unit] // self.block

    @property
    def name(self) -> str:
        return self.unit if self.block == 1 else f"{self.unit}/{self.block}"

    def codes(self, micros: np.ndarray) -> np.ndarray:
        """Codes from pickup timestamps in µs since 1970 (wall-clock time, as the TLC files store it), int64.

        In place in one array of Arrow's pool: hours since a Monday 00:00 (the epoch's Thursday less 3 days), modulo
        a day or a week; the weekday is the hour of the week's day.
        """
        hours = buffers.empty(micros.size, np.int64)
        np.floor_divide(micros, MICROS_PER_HOUR, out=hours)
        if self.unit == "hour":
            np.remainder(hours, HOURS_PER_DAY, out=hours)
        else:
            hours += _EPOCH_WEEKDAY * HOURS_PER_DAY
            np.remainder(hours, HOURS_PER_WEEK, out=hours)
            if self.unit == "weekday":
                np.floor_divide(hours, HOURS_PER_DAY, out=hours)
        if self.block > 1:
            np.floor_divide(hours, self.block, out=hours)
        return hours


@dataclass(frozen=True)
class Zone:
    """The pickup or dropoff zone as one factor of an interaction: 266 levels, ids out of 1..265 at level 0."""

    column: str  # PULocationID or DOLocationID

    @property
    def levels(self) -> int:
        return N_ZONES

    @property
    def name(self) -> str:
        return self.column

    def codes(self, values: np.ndarray) -> np.ndarray:
        """Codes from zone ids as floats (nulls and unknown ids: 0, a level no training row has)."""
        known = np.isfinite(values) & (values >= 1) & (values < N_ZONES)
        return np.where(known, values, 0).astype(np.int64)


Part = Bins | Clock | Zone


@dataclass(frozen=True)
class Factor:
    """A one-hot term: one part, or the interaction of several (levels multiply)."""

    parts: tuple[Part, ...]

    @property
    def levels(self) -> int:
        return math.prod(p.levels for p in self.parts)

    @property
    def name(self) -> str:
        return "*".join(p.name for p in self.parts)

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns the factor reads beside the pickup time: those it bins, and zones it interacts with."""
        return tuple(p.column for p in self.parts if isinstance(p, (Bins, Zone)))

    @property
    def timed(self) -> bool:
        """Whether a part is the pickup time."""
        return any(isinstance(p, Clock) for p in self.parts)


@dataclass(frozen=True)
class Terms:
    """A parsed term list, by kind, each in the order given."""

    zones: tuple[str, ...]
    numeric: tuple[str, ...]
    factors: tuple[Factor, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.zones, *self.numeric, *(f.name for f in self.factors))


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOG = re.compile(r"log(\d+)(?:\(([^,()]+),([^,()]+)\))?")
_QUANTILE = re.compile(r"q(\d+)(\[[^\]]*\])?")
_CLOCK = re.compile(r"(hour|weekday|hour_of_week)(?:/(\d+))?")


def split_terms(text: str) -> list[str]:
    """A comma list of terms, commas inside brackets or parentheses kept: ``a,b:[1,2],c`` is three terms."""
    out: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    out.append("".join(current).strip())
    return [term for term in out if term]


def _number(text: str, term: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TermError(f"term {term!r}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise TermError(f"term {term!r}: {text.strip()!r} is not a finite number")
    return value


def _edges(text: str, term: str) -> tuple[float, ...]:
    """``[1,2,5]``: at least one edge, strictly increasing."""
    edges = tuple(_number(e, term) for e in text[1:-1].split(",") if e.strip())
    if not edges:
        raise TermError(f"term {term!r}: give at least one bin edge")
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise TermError(f"term {term!r}: bin edges must be strictly increasing")
    return edges


def _bins(column: str, how: str, term: str) -> Bins:
    if how.startswith("[") and how.endswith("]"):
        return Bins(column, _edges(how, term), how.replace(" ", ""))
    quantile = _QUANTILE.fullmatch(how.replace(" ", ""))
    if quantile is not None:
        count = int(quantile.group(1))
        if count < 2:
            raise TermError(f"term {term!r}: give 2 or more bins")
        edges = _edges(quantile.group(2), term) if quantile.group(2) else ()
        if len(edges) >= count:
            raise TermError(f"term {term!r}: {count} quantile bins have at most {count - 1} edges")
        return Bins(column, edges, quantile.group(0), count)
    match = _LOG.fullmatch(how.replace(" ", ""))
    if match is None:
        raise TermError(f"term {term!r}: bins are COLUMN:logN, COLUMN:logN(LOW,HIGH), COLUMN:qN or COLUMN:[EDGE,...]")
    count = int(match.group(1))
    low, high = (_number(match.group(2), term), _number(match.group(3), term)) if match.group(2) else LOG_RANGE
    if count < 2:
        raise TermError(f"term {term!r}: give 2 or more bins")
    if not 0 < low < high:
        raise TermError(f"term {term!r}: log-spaced bins need 0 < LOW < HIGH")
    edges = tuple(float(e) for e in np.geomspace(low, high, count - 1))
    return Bins(column, edges, match.group(0))


def _part(text: str, term: str) -> Part:
    clock = _CLOCK.fullmatch(text)
    if clock is not None:
        unit: Unit = clock.group(1)  # type: ignore[assignment]
        block = int(clock.group(2) or 1)
        if block < 1 or _UNIT_LEVELS[unit] % block or (unit == "weekday" and block != 1):
            raise TermError(f"term {term!r}: {unit} comes in blocks that divide {_UNIT_LEVELS[unit]} hours")
        return Clock(unit, block)
    column, colon, how = text.partition(":")
    if colon and _IDENTIFIER.fullmatch(column):
        return _bins(column, how, term)
    if text in ZONE_TERMS[:2]:
        return Zone(text)
    if text in ZONE_TERMS:
        raise TermError(f"term {term!r}: PU_DO cannot interact; interact PULocationID or DOLocationID with a factor")
    raise TermError(f"term {term!r}: unknown term (zone terms, a numeric column, COLUMN:logN bins, hour, weekday, hour_of_week)")


def parse_term(term: str) -> str | Factor:
    """One term: a zone term or numeric column name (as is), or a :class:`Factor`."""
    text = term.strip()
    if text in ZONE_TERMS:
        return text
    if _IDENTIFIER.fullmatch(text) and _CLOCK.fullmatch(text) is None:
        return text
    factor = Factor(tuple(_part(p.strip(), term) for p in text.split("*")))
    if all(isinstance(p, Zone) for p in factor.parts):
        raise TermError(f"term {term!r}: zones interact with a factor (bins or time); the zone pair is PU_DO")
    return factor


def parse_terms(terms: str | Iterable[str]) -> Terms:
    """A term list (comma text or a sequence); :class:`TermError` names the first term at fault."""
    items = split_terms(terms) if isinstance(terms, str) else [t.strip() for t in terms]
    if not items:
        raise TermError("give at least one term")
    zones: list[str] = []
    numeric: list[str] = []
    factors: list[Factor] = []
    for item in items:
        parsed = parse_term(item)
        name = parsed.name if isinstance(parsed, Factor) else parsed
        if name in (*zones, *numeric, *(f.name for f in factors)):
            raise TermError(f"term {item!r} is listed twice")
        if isinstance(parsed, Factor):
            factors.append(parsed)
        elif parsed in ZONE_TERMS:
            zones.append(parsed)
        else:
            numeric.append(parsed)
    check_size(factors)
    return Terms(tuple(z for z in ZONE_TERMS if z in zones), tuple(numeric), tuple(factors))


def check_size(factors: Sequence[Factor]) -> None:
    """Refuse factors whose levels together exceed :data:`MAX_LEVELS`, naming the largest."""
    total = sum(f.levels for f in factors)
    if total > MAX_LEVELS:
        largest = max(factors, key=lambda f: f.levels)
        raise TermError(
            f"term {largest.name!r}: {largest.levels} levels ({total} in all) is too large for the exact solver, "
            f"which takes at most {MAX_LEVELS} levels beside the zones"
        )


def quantile_columns(terms: Iterable[str]) -> dict[str, set[int]]:
    """The columns of quantile bins still without edges, and their bin counts: what a run must measure first."""
    out: dict[str, set[int]] = {}
    for term in terms:
        parsed = parse_term(term)
        for part in parsed.parts if isinstance(parsed, Factor) else ():
            if isinstance(part, Bins) and part.unresolved:
                out.setdefault(part.column, set()).add(part.quantiles)
    return out


def quantile_edges(values: np.ndarray, count: int) -> tuple[float, ...]:
    """Edges cutting ``values`` into ``count`` bins of about equal counts; repeated quantiles merge (fewer bins)."""
    if not values.size:
        raise TermError(f"q{count}: no training values to take quantiles of")
    edges = np.unique(np.quantile(values, np.arange(1, count) / count))
    return tuple(float(e) for e in edges)


def with_quantile_edges(term: str, edges: dict[tuple[str, int], tuple[float, ...]]) -> str:
    """``term`` with each quantile part's edges written in (``trip_distance:q32[...]``); other terms as they are."""
    parsed = parse_term(term)
    if not isinstance(parsed, Factor) or not any(isinstance(p, Bins) and p.unresolved for p in parsed.parts):
        return term
    return "*".join((p.fixed(edges[(p.column, p.quantiles)]) if isinstance(p, Bins) and p.unresolved else p).name for p in parsed.parts)
