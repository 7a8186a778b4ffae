"""Synthetic TLC-shaped trip months, so tests, the demo and benchmarks need no downloads.

The generator imitates what matters to a duration model trained on one-hot pickup
zone, dropoff zone and their pair: one fixed "city" (zone coordinates, popularity,
speeds, per-pair quirks) built from an internal seed and shared by every month and
every ``seed``, so a model fitted on one month transfers to the next; the trips
themselves are drawn from a generator seeded by ``(seed, year, month, taxi)`` only,
so a month's content never depends on which other months are generated.

It also reproduces the real files' exact column names, order and Arrow types
(2023-01 yellow: 19 columns; green: 20) and their warts at realistic small rates:
zero and negative durations, multi-hour trips, sub-minute trips, zero distances and
rows whose ``passenger_count``/``RatecodeID``/``store_and_fwd_flag``/surcharges are
null together. Pure numpy + pyarrow: 3M rows take about two seconds on one core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.months import Month
from pipeline.core.schema import TAXI_TYPES
from pipeline.edge.atomic import atomic_path
from pipeline.edge.sources import month_filename
from pipeline.errors import PipelineError

__all__ = [
    "GREEN_SCHEMA",
    "YELLOW_SCHEMA",
    "month_filename",
    "synth_month",
    "write_months",
    "write_table",
]

# Zone ids run 1..265; 264 and 265 are the TLC's "unknown" zones.
_N_ZONES = 265

YELLOW_SCHEMA = pa.schema(
    [
        ("VendorID", pa.int64()),
        ("tpep_pickup_datetime", pa.timestamp("us")),
        ("tpep_dropoff_datetime", pa.timestamp("us")),
        ("passenger_count", pa.float64()),
        ("trip_distance", pa.float64()),
        ("RatecodeID", pa.float64()),
        ("store_and_fwd_flag", pa.string()),
        ("PULocationID", pa.int64()),
        ("DOLocationID", pa.int64()),
        ("payment_type", pa.int64()),
        ("fare_amount", pa.float64()),
        ("extra", pa.float64()),
        ("mta_tax", pa.float64()),
        ("tip_amount", pa.float64()),
        ("tolls_amount", pa.float64()),
        ("improvement_surcharge", pa.float64()),
        ("total_amount", pa.float64()),
        ("congestion_surcharge", pa.float64()),
        ("airport_fee", pa.float64()),
    ]
)

GREEN_SCHEMA = pa.schema(
    [
        ("VendorID", pa.int64()),
        ("lpep_pickup_datetime", pa.timestamp("us")),
        ("lpep_dropoff_datetime", pa.timestamp("us")),
        ("store_and_fwd_flag", pa.string()),
        ("RatecodeID", pa.float64()),
        ("PULocationID", pa.int64()),
        ("DOLocationID", pa.int64()),
        ("passenger_count", pa.float64()),
        ("trip_distance", pa.float64()),
        ("fare_amount", pa.float64()),
        ("extra", pa.float64()),
        ("mta_tax", pa.float64()),
        ("tip_amount", pa.float64()),
        ("tolls_amount", pa.float64()),
        ("ehail_fee", pa.float64()),
        ("improvement_surcharge", pa.float64()),
        ("total_amount", pa.float64()),
        ("payment_type", pa.float64()),
        ("trip_type", pa.float64()),
        ("congestion_surcharge", pa.float64()),
    ]
)

_SCHEMAS = {"yellow": YELLOW_SCHEMA, "green": GREEN_SCHEMA}

# The city never changes: changing this seed changes every synthetic file.
_CITY_SEED = 20_230_101
# Rows are generated in fixed-size chunks to bound temporaries; part of the output's identity.
_CHUNK = 1 << 20

# The real Manhattan zone ids, so demo output names familiar zones (237, 161, 236, ...).
_MANHATTAN = (
    4, 12, 13, 24, 41, 42, 43, 45, 48, 50, 68, 74, 75, 79, 87, 88, 90, 100, 103, 104, 105,
    107, 113, 114, 116, 120, 125, 127, 128, 137, 140, 141, 142, 143, 144, 148, 151, 152,
    153, 158, 161, 162, 163, 164, 166, 170, 186, 194, 202, 209, 211, 224, 229, 230, 231,
    232, 233, 234, 236, 237, 238, 239, 243, 244, 246, 249, 261, 262, 263,
)  # fmt: skip
_EWR, _JFK, _LGA = 1, 132, 138
_UNKNOWN = (264, 265)
# Islands, Rikers, Jamaica Bay ...: zones that almost never see a trip.
_DESERTED = (2, 103, 104, 105, 199, 30, 110, 176, 84, 204, 44, 5, 187, 99, 27, 156, 172, 245)

# Share of pickups per hour of day (shape of the real yellow files), and a duration factor.
_HOUR_WEIGHTS = np.array(
    [2.8, 1.9, 1.3, 0.9, 0.6, 0.7, 1.6, 2.8, 3.6, 4.0, 4.3, 4.6,
     5.0, 5.2, 5.6, 5.8, 5.9, 6.5, 6.6, 5.8, 5.1, 5.1, 4.6, 3.7]
)  # fmt: skip
_HOUR_SLOWDOWN = np.array(
    [0.82, 0.80, 0.79, 0.79, 0.80, 0.85, 0.95, 1.08, 1.15, 1.12, 1.10, 1.10,
     1.12, 1.14, 1.18, 1.20, 1.20, 1.17, 1.10, 1.02, 0.97, 0.94, 0.91, 0.86]
)  # fmt: skip

# Warts, as shares of all rows (chosen from one uniform draw, so they never overlap).
_P_ZERO_DURATION = 0.0035
_P_NEGATIVE_DURATION = 0.0035
_P_SUBMINUTE = 0.010
_P_MULTIHOUR = 0.003
_P_NULL_PASSENGERS = 0.025
_P_ZERO_DISTANCE = 0.003  # on top of the zero distances of zero/sub-minute trips


@dataclass(frozen=True)
class _City:
    """Per-pair lookup tables, flattened to ``(pu - 1) * _N_ZONES + (do - 1)``."""

    pair_cdf: np.ndarray  # cumulative joint probability of (PU, DO)
    road_miles: np.ndarray  # typical driven distance
    minutes_per_mile: np.ndarray  # 60 / speed, times the pair's own quirk
    fixed_minutes: np.ndarray  # pickup + dropoff overhead, times the pair's quirk
    toll_prob: np.ndarray
    congestion: np.ndarray  # bool: touches Manhattan, pays the congestion surcharge
    jfk_flat: np.ndarray  # bool: JFK <-> Manhattan, usually RatecodeID 2
    to_newark: np.ndarray  # bool: dropoff at EWR, usually RatecodeID 3
    airport_pickup: np.ndarray  # bool: pays the airport fee


@lru_cache(maxsize=1)
def _city() -> _City:
    """Build the fixed city once; every month and every seed share it."""
    rng = np.random.default_rng(_CITY_SEED)
    ids = np.arange(1, _N_ZONES + 1)
    manhattan = np.isin(ids, _MANHATTAN)
    idx = ids - 1

    # Coordinates in miles: Manhattan a narrow strip, the boroughs a wide ring around it.
    xy = np.empty((_N_ZONES, 2))
    n_man = int(manhattan.sum())
    xy[manhattan, 0] = rng.uniform(-1.0, 1.0, n_man)
    xy[manhattan, 1] = rng.uniform(-5.0, 7.0, n_man)
    n_out = _N_ZONES - n_man
    radius = rng.uniform(3.0, 14.0, n_out)
    angle = rng.uniform(0.0, 2 * np.pi, n_out)
    xy[~manhattan, 0] = 2.0 + radius * np.cos(angle)
    xy[~manhattan, 1] = -2.0 + radius * np.sin(angle)
    for zone, where in ((_JFK, (9.0, -11.0)), (_LGA, (6.0, 3.0)), (_EWR, (-11.0, -4.0))):
        xy[zone - 1] = where
    for zone in _UNKNOWN:
        xy[zone - 1] = (0.0, 1.0)
    size = np.where(manhattan, rng.uniform(0.35, 0.6, _N_ZONES), rng.uniform(0.7, 1.5, _N_ZONES))

    # Popularity: lognormal, Manhattan far ahead, a few zones almost deserted.
    pop = np.where(manhattan, 12.0 * rng.lognormal(0.0, 1.0, _N_ZONES), 0.15 * rng.lognormal(0.0, 1.3, _N_ZONES))
    pop[np.isin(ids, _DESERTED)] *= 0.002
    fixed_share = {_JFK: 0.04, _LGA: 0.03, _EWR: 0.0002, 264: 0.004, 265: 0.002}
    special = np.isin(ids, list(fixed_share))
    pop[special] = 0.0
    pop *= (1.0 - sum(fixed_share.values())) / pop.sum()
    for zone, share in fixed_share.items():
        pop[zone - 1] = share
    attract = pop.copy()
    attract[_EWR - 1] *= 30.0  # people ride to Newark, rarely from it

    # Dropoff given pickup: popularity x distance kernel with a long tail (airport runs).
    dist = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    kernel = np.exp(-dist / 2.0) + 0.02 * np.exp(-dist / 12.0)
    kernel[np.diag_indices(_N_ZONES)] *= 0.3  # few rides stay inside their own zone
    cond = attract[None, :] * kernel
    cond /= cond.sum(axis=1, keepdims=True)
    joint = (pop[:, None] * cond).ravel()
    pair_cdf = np.cumsum(joint)
    pair_cdf /= pair_cdf[-1]

    road = np.where(dist > 0, 1.25 * dist + 0.2, size[:, None])
    speed = np.where(  # miles per hour
        manhattan, 10.0 * rng.lognormal(0.0, 0.2, _N_ZONES), 17.0 * rng.lognormal(0.0, 0.25, _N_ZONES)
    )
    speed[[_JFK - 1, _LGA - 1, _EWR - 1]] = 22.0
    pair_speed = 0.5 * (speed[:, None] + speed[None, :]) * np.minimum(1.0 + road / 8.0, 2.8)
    pu_overhead = np.abs(rng.normal(1.0, 0.7, _N_ZONES))
    do_overhead = np.abs(rng.normal(1.0, 0.7, _N_ZONES))
    pu_overhead[[_JFK - 1, _LGA - 1]] = (4.0, 3.0)
    do_overhead[[_JFK - 1, _LGA - 1, _EWR - 1]] = 2.0
    quirk = rng.lognormal(0.0, 0.15, (_N_ZONES, _N_ZONES))

    airport = np.isin(ids, (_JFK, _LGA, _EWR))
    outer_end = ~manhattan[:, None] | ~manhattan[None, :] | airport[:, None] | airport[None, :]
    toll_prob = np.where((road > 6.0) & outer_end, 0.6, 0.01)
    congestion = manhattan[:, None] | manhattan[None, :]
    jfk = idx == _JFK - 1
    jfk_flat = (jfk[:, None] & manhattan[None, :]) | (manhattan[:, None] & jfk[None, :])
    to_newark = np.broadcast_to((idx == _EWR - 1)[None, :], (_N_ZONES, _N_ZONES))
    airport_pickup = np.broadcast_to(np.isin(ids, (_JFK, _LGA))[:, None], (_N_ZONES, _N_ZONES))

    flat = {
        "road_miles": road,
        "minutes_per_mile": 60.0 / pair_speed * quirk,
        "fixed_minutes": (pu_overhead[:, None] + do_overhead[None, :]) * quirk,
        "toll_prob": toll_prob,
        "congestion": congestion,
        "jfk_flat": jfk_flat,
        "to_newark": to_newark,
        "airport_pickup": airport_pickup,
    }
    arrays = {k: np.ascontiguousarray(v).ravel() for k, v in flat.items()}
    for array in arrays.values():
        array.flags.writeable = False
    pair_cdf.flags.writeable = False
    return _City(pair_cdf=pair_cdf, **arrays)


def _pick(rng: np.random.Generator, values: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """Draw ``n`` of ``values`` with ``probs``; a searchsorted is much faster than ``choice``."""
    cdf = np.cumsum(np.asarray(probs, dtype=float))
    pos = np.searchsorted(cdf / cdf[-1], rng.random(n), side="right")
    return np.asarray(values)[np.minimum(pos, len(values) - 1)]


def _log_uniform_seconds(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    """Whole seconds spread evenly on a log scale, so both short and extreme values occur."""
    return np.rint(np.exp(rng.uniform(np.log(lo), np.log(hi), n))).astype(np.int64)


def _month_bounds(month: Month) -> tuple[np.datetime64, int]:
    start = np.datetime64(f"{month}-01", "s")
    end = np.datetime64(f"{month.next()}-01", "s")
    return start, int((end - start) // np.timedelta64(1, "D"))


def _check_args(rows: int, seed: int, taxi: str) -> None:
    if taxi not in _SCHEMAS:
        raise PipelineError(f"unknown taxi type {taxi!r}: expected one of {', '.join(TAXI_TYPES)}")
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise PipelineError(f"rows must be a positive integer, got {rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PipelineError(f"seed must be a non-negative integer, got {seed!r}")


def synth_month(month: Month, rows: int, seed: int = 0, taxi: str = "yellow") -> pa.Table:
    """One month of ``taxi`` trips shaped like the TLC file, identical for identical arguments.

    Pickups fall anywhere in the month (hour-of-day shaped) and come out sorted, as
    the real files roughly are; durations depend on the zones so they are learnable.
    """
    _check_args(rows, seed, taxi)
    city = _city()
    taxi_code = TAXI_TYPES.index(taxi)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), month.year, month.month, taxi_code]))
    start, days = _month_bounds(month)
    first_dow = int((start.astype("datetime64[D]").astype(np.int64) + 3) % 7)  # 0 = Monday

    # Pickup offsets in seconds from the month start, sorted (int32 sorts fast).
    hours = _pick(rng, np.arange(24, dtype=np.int32), _HOUR_WEIGHTS, rows)
    offsets = rng.integers(0, days, rows, dtype=np.int32) * 86_400 + hours * 3_600
    offsets += rng.integers(0, 3_600, rows, dtype=np.int32)
    offsets.sort()
    del hours

    columns: dict[str, list[pa.Array]] = {name: [] for name in _SCHEMAS[taxi].names}
    start_us = start.astype("datetime64[us]").astype(np.int64)
    for lo in range(0, rows, _CHUNK):
        chunk = _synth_chunk(rng, city, offsets[lo : lo + _CHUNK], start_us, first_dow, month, taxi)
        for name, array in chunk.items():
            columns[name].append(array)
    schema = _SCHEMAS[taxi]
    return pa.Table.from_arrays([pa.chunked_array(columns[f.name], type=f.type) for f in schema], schema=schema)


def _synth_chunk(
    rng: np.random.Generator,
    city: _City,
    offsets: np.ndarray,
    start_us: int,
    first_dow: int,
    month: Month,
    taxi: str,
) -> dict[str, pa.Array]:
    """All columns for one chunk of rows whose pickup offsets are given."""
    n = len(offsets)
    hour = (offsets % 86_400) // 3_600
    dow = (first_dow + offsets // 86_400) % 7

    # Zones: one draw from the joint (PU, DO) distribution.
    pair = np.searchsorted(city.pair_cdf, rng.random(n), side="right")
    np.minimum(pair, _N_ZONES * _N_ZONES - 1, out=pair)
    pu = pair // _N_ZONES + 1
    do = pair % _N_ZONES + 1

    # Distance and duration: zone-driven, with multiplicative noise.
    distance = city.road_miles[pair] * rng.lognormal(0.0, 0.22, n)
    minutes = distance * city.minutes_per_mile[pair] + city.fixed_minutes[pair]
    minutes *= _HOUR_SLOWDOWN[hour] * rng.lognormal(0.0, 0.25, n)
    seconds = np.rint(minutes * 60.0).astype(np.int64)

    # Warts, from one uniform so the categories are disjoint.
    u = rng.random(n)
    edges = np.cumsum([_P_ZERO_DURATION, _P_NEGATIVE_DURATION, _P_SUBMINUTE, _P_MULTIHOUR])
    zero = u < edges[0]
    negative = (u >= edges[0]) & (u < edges[1])
    subminute = (u >= edges[1]) & (u < edges[2])
    multihour = (u >= edges[2]) & (u < edges[3])
    seconds[zero] = 0
    seconds[negative] = -_log_uniform_seconds(rng, 1.0, 7_200.0, int(negative.sum()))  # up to 2 h early
    seconds[subminute] = rng.integers(1, 60, int(subminute.sum()))
    seconds[multihour] = _log_uniform_seconds(rng, 3_660.0, 86_400.0, int(multihour.sum()))  # ~30% > 10 h
    v = rng.random(n)
    zero_distance = ((zero | subminute) & (v < 0.5)) | (v > 1.0 - _P_ZERO_DISTANCE)
    distance[zero_distance] = 0.0
    distance = np.round(distance, 2)
    null_rows = rng.random(n) < _P_NULL_PASSENGERS

    pickup_us = start_us + offsets.astype(np.int64) * 1_000_000
    dropoff_us = pickup_us + seconds * 1_000_000

    # Categorical columns with the real files' rough frequencies.
    vendor = _pick(rng, np.array([1, 2], dtype=np.int64), [0.27, 0.73], n)
    passengers = _pick(rng, np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]), [73, 15, 4, 2, 2, 1.5, 2], n)
    payment = _pick(rng, np.array([1, 2, 3, 4], dtype=np.int64), [78, 19, 1, 2], n)
    flag = _pick(rng, np.array([0, 1], dtype=np.int8), [0.993, 0.007], n)
    ratecode = _pick(rng, np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 99.0]), [97.5, 0.1, 0.05, 0.3, 0.6, 0.01, 0.3], n)
    w = rng.random(n)
    ratecode[city.jfk_flat[pair] & (w < 0.8)] = 2.0
    ratecode[city.to_newark[pair] & (w < 0.8)] = 3.0

    # Money (2023 rules): metered fare from distance and time, flat JFK fare, surcharges.
    clipped_minutes = np.clip(seconds, 0, 3 * 3_600) / 60.0
    fare = 3.0 + 2.8 * distance + 0.35 * clipped_minutes
    fare = np.where(ratecode == 2.0, 70.0, fare)
    negotiated = ratecode == 5.0
    fare[negotiated] = np.round(fare[negotiated] / 5.0) * 5.0 + 5.0
    fare = np.round(fare, 2)
    weekday = dow < 5
    extra = np.where((hour >= 20) | (hour < 6), 1.0, np.where(weekday & (hour >= 16) & (hour < 20), 2.5, 0.0))
    mta_tax = np.full(n, 0.5)
    improvement = np.full(n, 1.0 if month.year >= 2023 else 0.3)
    tip = np.where((payment == 1) & (rng.random(n) > 0.15), np.round(fare * rng.uniform(0.1, 0.3, n), 2), 0.0)
    tolls = np.where(rng.random(n) < city.toll_prob[pair], 6.55, 0.0)
    congestion = np.where(city.congestion[pair], 2.5, 0.0)
    airport_fee = np.where(city.airport_pickup[pair], 1.25, 0.0) if taxi == "yellow" else np.zeros(n)
    # Refunds and disputes: about half of them carry negated amounts, as in the real files.
    refund = (payment >= 3) & (rng.random(n) < 0.5)
    sign = np.where(refund, -1.0, 1.0)
    fare, extra, mta_tax, improvement, congestion, airport_fee = (
        a * sign + 0.0  # + 0.0 turns -0.0 into 0.0
        for a in (fare, extra, mta_tax, improvement, congestion, airport_fee)
    )
    total = fare + extra + mta_tax + tip + tolls + improvement
    total += np.where(null_rows, 0.0, congestion + airport_fee)
    total = np.round(total, 2)

    flags = pa.array(["N", "Y"]).take(pa.array(flag, mask=null_rows))
    out: dict[str, pa.Array] = {
        "VendorID": pa.array(vendor, type=pa.int64()),
        "passenger_count": pa.array(passengers, mask=null_rows, type=pa.float64()),
        "trip_distance": pa.array(distance, type=pa.float64()),
        "RatecodeID": pa.array(ratecode, mask=null_rows, type=pa.float64()),
        "store_and_fwd_flag": flags,
        "PULocationID": pa.array(pu.astype(np.int64), type=pa.int64()),
        "DOLocationID": pa.array(do.astype(np.int64), type=pa.int64()),
        "fare_amount": pa.array(fare, type=pa.float64()),
        "extra": pa.array(extra, type=pa.float64()),
        "mta_tax": pa.array(mta_tax, type=pa.float64()),
        "tip_amount": pa.array(tip, type=pa.float64()),
        "tolls_amount": pa.array(tolls, type=pa.float64()),
        "improvement_surcharge": pa.array(improvement, type=pa.float64()),
        "total_amount": pa.array(total, type=pa.float64()),
        "congestion_surcharge": pa.array(congestion, mask=null_rows, type=pa.float64()),
    }
    prefix = "tpep" if taxi == "yellow" else "lpep"
    out[f"{prefix}_pickup_datetime"] = pa.array(pickup_us, type=pa.timestamp("us"))
    out[f"{prefix}_dropoff_datetime"] = pa.array(dropoff_us, type=pa.timestamp("us"))
    if taxi == "yellow":
        out["payment_type"] = pa.array(payment, type=pa.int64())
        out["airport_fee"] = pa.array(airport_fee, mask=null_rows, type=pa.float64())
    else:
        # Green files also null payment_type and trip_type on those rows, and never fill ehail_fee.
        trip_type = np.where(negotiated & (rng.random(n) < 0.5), 2.0, 1.0)
        out["payment_type"] = pa.array(payment.astype(np.float64), mask=null_rows, type=pa.float64())
        out["trip_type"] = pa.array(trip_type, mask=null_rows, type=pa.float64())
        out["ehail_fee"] = pa.nulls(n, pa.float64())
    return out


def write_table(table: pa.Table, path: Path, row_group_size: int = 500_000, checksums: bool = True) -> None:
    """Write parquet atomically: a temp file in the same directory, then ``os.replace``.

    Readers never see a torn file; on any failure the temp file is removed and an
    existing ``path`` is left untouched. With ``checksums`` every data page carries
    a CRC, so a reader detects a damaged page instead of decoding garbage; without,
    the file is like many published ones (tests of damage that goes unnoticed).
    """
    if row_group_size < 1:
        raise PipelineError(f"row_group_size must be positive, got {row_group_size}")
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, write_page_checksum=checksums)


def months_to_write(folder: Path, months: Sequence[Month], rows: int, taxi: str = "yellow") -> dict[Month, int | None]:
    """The months of ``folder`` that are missing or hold another number of rows than ``rows``: each with the rows it
    holds now (None: no file). A footer read each; a file that cannot be read counts as one to write again."""
    stale: dict[Month, int | None] = {}
    for month in months:
        path = folder / month_filename(taxi, month)
        if not path.is_file():
            stale[month] = None
            continue
        try:
            held = pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowException):
            held = 0
        if held != rows:
            stale[month] = held
    return stale


def write_months(
    output: Path,
    months: Sequence[Month],
    rows: int,
    seed: int = 0,
    taxi: str = "yellow",
    row_group_size: int = 500_000,
    checksums: bool = True,
) -> list[Path]:
    """Write one TLC-named file per month into ``output``, one month in memory at a time (page CRCs with ``checksums``)."""
    _check_args(rows, seed, taxi)
    if row_group_size < 1:
        raise PipelineError(f"row_group_size must be positive, got {row_group_size}")
    output = Path(output)
    paths: list[Path] = []
    for month in months:
        path = output / month_filename(taxi, month)
        table = synth_month(month, rows, seed=seed, taxi=taxi)
        write_table(table, path, row_group_size=row_group_size, checksums=checksums)
        del table
        paths.append(path)
    return paths
