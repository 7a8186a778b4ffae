"""The hot path's shortcuts give the row-wise definitions exactly (issue 12).

``encode`` works by blocks with an integer duration window; statistics take
float sums where their bounds make them exact. Each is held here against the
plain definition: the seed's float comparison, whole-array masks, Python ints.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import features, stats
from pipeline.core.features import MICROS_PER_DAY, MICROS_PER_MINUTE, N_ZONES, Encoded, FeatureSpec, encode, training_rows
from pipeline.core.months import Month
from pipeline.core.schema import DO, DROPOFF, PICKUP, PU

MONTH = Month(2023, 3)
MONTH_START = int(np.datetime64("2023-03-01", "us").astype(np.int64))
BOUNDS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False) | st.sampled_from([0.0, 1.0, 60.0, 1e-9, float("inf")])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(low=BOUNDS, high=BOUNDS, offsets=st.lists(st.integers(-3, 3), min_size=1, max_size=8))
def test_the_integer_window_keeps_what_the_seeds_float_comparison_keeps(low, high, offsets):
    spec = FeatureSpec(min_minutes=low, max_minutes=high)
    first, last = features.duration_window(spec)
    # the microseconds right at and around each bound, where rounding would show
    edges = [int(np.clip(bound * MICROS_PER_MINUTE, -(2**62), 2**62)) for bound in (low, high) if np.isfinite(bound)]
    micros = np.array([edge + offset for edge in [*edges, first, last] for offset in offsets if abs(edge) < 2**62], dtype=np.int64)
    minutes = micros / MICROS_PER_MINUTE
    assert np.array_equal(features._in_window(micros, (first, last)), (minutes >= low) & (minutes <= high))


def _messy_table(rows: int, seed: int) -> pa.Table:
    """Trips with null timestamps, unknown zones, dropoffs before pickups and stamps outside the month."""
    rng = np.random.default_rng(seed)
    pick = MONTH_START + rng.integers(0, 31 * MICROS_PER_DAY, rows)
    drop = pick + rng.integers(-5 * MICROS_PER_MINUTE, 90 * MICROS_PER_MINUTE, rows)
    drop[rng.random(rows) < 0.05] += 40 * MICROS_PER_DAY
    return pa.table(
        {
            PICKUP: pa.array(pick, pa.timestamp("us"), mask=rng.random(rows) < 0.03),
            DROPOFF: pa.array(drop, pa.timestamp("us"), mask=rng.random(rows) < 0.03),
            PU: pa.array(rng.integers(-2, 270, rows), pa.int32(), mask=rng.random(rows) < 0.03),
            DO: pa.array(rng.integers(-2, 270, rows), pa.int32()),
            "trip_distance": pa.array(rng.random(rows) * 10),
        }
    )


@pytest.mark.parametrize("block_rows", [1, 7, 64, 1 << 16])
def test_encode_by_blocks_equals_the_whole_array_definition(monkeypatch, block_rows):
    table = _messy_table(500, seed=block_rows)
    spec = FeatureSpec(numeric=("trip_distance",))
    monkeypatch.setattr(features, "BLOCK_ROWS", block_rows)
    encoded = encode(table, spec, MONTH, offset=1_000)
    rows = training_rows(table, spec)  # whole arrays, no blocks
    kept = np.flatnonzero(rows.keep)
    assert np.array_equal(encoded.position, kept + 1_000)
    assert np.array_equal(encoded.pair, rows.pu[kept] * N_ZONES + rows.do[kept])
    assert np.array_equal(encoded.micros, rows.micros[kept])
    assert np.array_equal(encoded.x[:, 0], table["trip_distance"].to_numpy()[kept])
    pick = table[PICKUP].cast(pa.int64()).to_numpy(zero_copy_only=False)
    drop = table[DROPOFF].cast(pa.int64()).to_numpy(zero_copy_only=False)
    low, high = MONTH_START - MICROS_PER_DAY, int(np.datetime64("2023-04-02", "us").astype(np.int64))
    outside = lambda stamps: np.nan_to_num(stamps, nan=low).astype(np.int64)  # noqa: E731 - nulls count once, as null
    odd = ~rows.valid | (rows.micros < 0)
    odd |= (outside(pick) < low) | (outside(pick) >= high) | (outside(drop) < low) | (outside(drop) >= high)
    known = (rows.pu >= 0) & (rows.do >= 0)
    # dropped by duration: rows whose timestamps (present, in order, in the month) and zones are good, outside the window
    expected = [500, np.count_nonzero(~odd & known & ~rows.keep), np.count_nonzero(odd), np.count_nonzero(~known)]
    assert encoded.screened.tolist() == expected
    assert expected[2] > 0 and expected[3] > 0 and 0 < kept.size < 500


def _python_sums(pair: np.ndarray, micros: np.ndarray, fold: np.ndarray, folds: int) -> tuple[dict[int, int], list[int]]:
    sums: dict[int, int] = {}
    squares = [0] * folds
    for p, m, f in zip(pair.tolist(), micros.tolist(), fold.tolist()):
        sums[f * stats.N_PAIRS + p] = sums.get(f * stats.N_PAIRS + p, 0) + m
        squares[f] += m * m
    return sums, squares


CASES = {
    "seed durations: float sums and squares": (3_600_000_000, 70_000),
    "past 2^32 us: integer squares": (2**34, 70_000),
    "pair sums past 2^53: 16-bit limbs": (2**45, 1_000),  # squares of these overflow int64 limbs, as they always did
}


@pytest.mark.parametrize(("longest", "rows"), CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("folds", [1, 3])
def test_statistics_are_exact_on_the_float_and_the_integer_paths(longest, rows, folds):
    rng = np.random.default_rng(folds)
    encoded = Encoded(
        pair=rng.integers(1, 4, rows) * N_ZONES + 1,  # 3 pairs, so bins fill up
        micros=rng.integers(-longest // 8, longest, rows),
        x=np.empty((rows, 0)),
        position=np.arange(rows),
    )
    fold = rng.integers(0, folds, rows)
    computed = stats.compute(encoded, fold if folds > 1 else None, folds)
    sums, squares = _python_sums(encoded.pair, encoded.micros, fold, folds)
    flat = computed.sum_micros.reshape(-1)
    assert {int(i): int(flat[i]) for i in np.flatnonzero(computed.count.reshape(-1))} == sums
    if longest <= 2**34:
        assert list(computed.sum_micros2) == squares


def _clean_table(rows: int, seed: int) -> pa.Table:
    """Trips as TLC files hold them: every zone known, every stamp present and inside the month."""
    rng = np.random.default_rng(seed)
    pick = MONTH_START + rng.integers(0, 30 * MICROS_PER_DAY, rows)
    return pa.table(
        {
            PICKUP: pa.array(pick, pa.timestamp("us")),
            DROPOFF: pa.array(pick + rng.integers(0, 90 * MICROS_PER_MINUTE, rows), pa.timestamp("us")),
            PU: pa.array(rng.integers(1, N_ZONES, rows), pa.int32()),
            DO: pa.array(rng.integers(1, N_ZONES, rows), pa.int32()),
            "trip_distance": pa.array(rng.random(rows) * 10),
        }
    )


SCREENED_CASES = {
    "messy rows, one fold": (_messy_table, FeatureSpec(), 1),
    "messy rows, three folds": (_messy_table, FeatureSpec(), 3),
    "clean rows (no masks needed), three folds": (_clean_table, FeatureSpec(), 3),
    "a numeric column: dropped rows set aside": (_messy_table, FeatureSpec(numeric=("trip_distance",)), 3),
    "a window past 2^32 us: integer paths": (_messy_table, FeatureSpec(max_minutes=1e9), 2),
    "an empty window": (_messy_table, FeatureSpec(min_minutes=30, max_minutes=20), 1),
    "factors and a numeric column: cells of the kept rows": (
        _messy_table,
        FeatureSpec.of("PU_DO,trip_distance:log8,trip_distance,hour"),
        3,
    ),
    "factors past 2^32 us, one fold": (_messy_table, FeatureSpec.of("PULocationID,trip_distance:log4*hour/6", 1, 1e9), 1),
}


@pytest.mark.parametrize(("make", "spec", "folds"), SCREENED_CASES.values(), ids=SCREENED_CASES.keys())
@pytest.mark.parametrize("block_rows", [7, 1 << 16])
@pytest.mark.parametrize("exact_float", [stats._EXACT_FLOAT, 1 << 20], ids=["float sums", "limb sums"])
def test_statistics_from_screened_blocks_equal_those_of_the_encoded_rows(monkeypatch, make, spec, folds, block_rows, exact_float):
    """compute_screened masks dropped rows into pair 0 instead of gathering the kept ones: the same numbers, to the bit."""
    table = make(3_000, seed=folds)
    fold = np.random.default_rng(block_rows).integers(0, folds, table.num_rows) if folds > 1 else None
    monkeypatch.setattr(features, "BLOCK_ROWS", block_rows)
    monkeypatch.setattr(stats, "_EXACT_FLOAT", exact_float)
    encoded = encode(table, spec, MONTH)
    codes = features.factor_codes(table, spec)
    levels = stats.Levels(codes, tuple(f.levels for f in spec.factors)) if spec.factors else None
    kept_levels = None if levels is None else stats.Levels(codes[encoded.position], levels.sizes)
    expected = stats.compute(encoded, None if fold is None else fold[encoded.position], folds, kept_levels)
    x = features.numeric_matrix(table, spec.numeric) if spec.numeric else None
    got = stats.compute_screened(features.screen(table, spec, MONTH), table.num_rows, fold, folds, x, levels).unpack()
    assert got.rows == encoded.rows and (encoded.rows > 1_000 or spec.min_minutes > spec.max_minutes)
    for ours, theirs in zip(
        (*got._arrays(), got.screened, got.cross, got.cross_pairs),
        (*expected._arrays(), expected.screened, expected.cross, expected.cross_pairs),
    ):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert np.array_equal(ours, theirs)
    assert got.n_levels == spec.levels and (not spec.factors or got.cross.sum() == len(spec.factors) * encoded.rows)


def test_statistics_of_no_rows_are_the_zero():
    table = _messy_table(0, seed=0)
    got = stats.compute_screened(features.screen(table, FeatureSpec(), MONTH), 0, None, 3, np.empty((0, 1))).unpack()
    zero = stats.empty(3, 1)
    assert all(np.array_equal(a, b) for a, b in zip((*got._arrays(), got.screened), (*zero._arrays(), zero.screened)))
