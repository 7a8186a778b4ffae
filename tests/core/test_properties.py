"""Properties the core promises, checked on random inputs (Hypothesis, derandomized so CI is deterministic).

``TAXI_PROPERTY_SCALE=20 pytest tests/core/test_properties.py`` runs 20 times the examples.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipeline.core import hashing, solve, stats
from pipeline.core.features import N_ZONES, Encoded, FeatureSpec, encode
from pipeline.core.hashing import fold_of, month_salt
from pipeline.core.model import Model
from pipeline.core.months import Month, parse_months
from pipeline.core.schema import DO, DROPOFF, PICKUP, PU, column_mapping, normalize
from pipeline.edge import chunks, reader
from pipeline.edge.sources import MonthFile
from pipeline.edge.synth import synth_month, write_table
from pipeline.errors import PipelineError

SCALE = int(os.environ.get("TAXI_PROPERTY_SCALE", "1"))


def _settings(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


#: A generator seed and a number of numeric columns: every random problem below starts from these.
seeds, numeric_columns = st.integers(0, 2**32 - 1), st.integers(0, 3)


def _encoded(rng: np.random.Generator, rows: int, numeric: int, zones: np.ndarray) -> Encoded:
    """Kept rows as ``encode`` makes them: pairs of the given zones, 1 to 60 minutes, numeric columns."""
    pu, do = rng.choice(zones, rows), rng.choice(zones, rows)
    x = rng.normal(size=(rows, numeric)) * rng.uniform(0.1, 10.0, numeric)
    minutes = 5 + (pu % 7) + 0.5 * (do % 5) + x @ rng.normal(size=numeric) + rng.normal(size=rows)
    micros = np.clip(np.round(minutes * 60e6), 60_000_000, 3_600_000_000).astype(np.int64)
    return Encoded(pair=pu * N_ZONES + do, micros=micros, x=x, position=np.arange(rows))


def _subset(enc: Encoded, rows: np.ndarray) -> Encoded:
    return Encoded(enc.pair[rows], enc.micros[rows], enc.x[rows], enc.position[rows])


# --- statistics of A ∪ B are stats(A) + stats(B) ------------------------------------------------------


@_settings(40)
@given(
    seed=seeds,
    rows=st.integers(1, 400),
    numeric=numeric_columns,
    folds=st.integers(1, 6),
    parts=st.integers(2, 5),
)
def test_statistics_of_a_union_are_the_sum_of_the_parts(seed, rows, numeric, folds, parts):
    rng = np.random.default_rng(seed)
    enc = _encoded(rng, rows, numeric, np.arange(1, N_ZONES))
    fold = rng.integers(0, folds, rows)
    owner = rng.integers(0, parts, rows)  # a random partition, not only contiguous slices
    whole = stats.compute(enc, fold, folds)
    summed = stats.combine([stats.compute(_subset(enc, owner == p), fold[owner == p], folds) for p in range(parts)])
    # Target statistics are exact integers: equal to the bit, and to a direct count.
    assert np.array_equal(summed.count, whole.count)
    assert np.array_equal(summed.sum_micros, whole.sum_micros)
    assert list(summed.sum_micros2) == list(whole.sum_micros2)
    index = fold * N_ZONES**2 + enc.pair
    assert np.array_equal(whole.count.ravel(), np.bincount(index, minlength=folds * N_ZONES**2))
    for f in range(folds):
        assert whole.sum_micros2[f] == sum(int(m) ** 2 for m in enc.micros[fold == f])
        assert int(whole.sum_micros[f].sum()) == sum(int(m) for m in enc.micros[fold == f])
    # Numeric sums are floats added in another order: equal to rounding.
    for a, b in zip(summed._arrays()[3:], whole._arrays()[3:]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)


# --- fold ids and statistics do not depend on the chunking ---------------------------------------------

MONTH = Month(2023, 2)
SPEC = FeatureSpec(numeric=("trip_distance",))


@pytest.fixture(scope="module")
def small_month() -> pa.Table:
    return synth_month(MONTH, 2_000, seed=3)


def _month_plan(path: Path) -> reader.MonthPlan:
    file = MonthFile("yellow", MONTH, str(path), path, identity=str(path.stat().st_mtime_ns))
    return reader.MonthPlan(file, reader.inspect(path, SPEC.columns()))


@_settings(15)
@given(
    group_rows=st.lists(st.integers(150, 2_000), min_size=2, max_size=2),
    chunk_rows=st.lists(st.integers(1, 2_500), min_size=2, max_size=2),
    folds=st.integers(2, 7),
    seed=st.integers(0, 2**31),
)
def test_fold_ids_and_statistics_do_not_depend_on_the_chunking(small_month, tmp_path_factory, group_rows, chunk_rows, folds, seed):
    folder = tmp_path_factory.mktemp("chunkings")
    ids, totals = [], []
    for n, (group, target) in enumerate(zip(group_rows, chunk_rows)):
        path = folder / f"{n}.parquet"
        write_table(small_month, path, row_group_size=group)
        plan = _month_plan(path)
        pieces = reader.plan(plan.layout, target)
        assert sum(c.rows for c in pieces) == small_month.num_rows
        encoded = [chunks.read_encoded(plan, c, SPEC) for c in pieces]
        position = np.concatenate([e.position for e in encoded])
        ids.append((position, np.concatenate([chunks.folds_of(plan, e, folds, seed) for e in encoded])))
        totals.append(stats.combine([chunks.chunk_statistics(plan, c, SPEC, folds, seed) for c in pieces]))
    # The reference: the whole month encoded at once, folds hashed from file positions.
    whole = encode(normalize(small_month, column_mapping(small_month.schema, SPEC.columns(), "m"), "m"), SPEC)
    expected_folds = fold_of(whole.position, month_salt(MONTH), seed, folds)
    for position, fold in ids:
        assert np.array_equal(position, whole.position)
        assert np.array_equal(fold, expected_folds)
    reference = stats.compute(whole, expected_folds, folds)
    for total in totals:
        assert np.array_equal(total.count, reference.count)
        assert np.array_equal(total.sum_micros, reference.sum_micros)
        assert list(total.sum_micros2) == list(reference.sum_micros2)
        np.testing.assert_allclose(total.sum_x, reference.sum_x, rtol=1e-12)
        np.testing.assert_allclose(total.sum_xx, reference.sum_xx, rtol=1e-12)


# --- the Schur solve is ridge regression -------------------------------------------------------------


def _ridge_by_lstsq(enc: Encoded, alpha: float) -> tuple[float, np.ndarray]:
    """Ridge with an unpenalised intercept as one least-squares problem: ``[X 1; √α I 0] w ≈ [y; 0]``.

    Only the categories present get a column (absent ones have weight 0 in ridge). lstsq
    works on the design itself (no normal equations), so it is an independent reference.
    """
    pu, do = enc.pair // N_ZONES, enc.pair % N_ZONES
    onehots = [(codes[:, None] == np.unique(codes)[None, :]).astype(float) for codes in (pu, do, enc.pair)]
    design = np.hstack([*onehots, enc.x])
    p = design.shape[1]
    a = np.vstack([np.hstack([design, np.ones((enc.rows, 1))]), np.hstack([np.sqrt(alpha) * np.eye(p), np.zeros((p, 1))])])
    w, *_ = np.linalg.lstsq(a, np.r_[enc.y, np.zeros(p)], rcond=None)
    return float(w[-1]), design @ w[:-1] + w[-1]


@_settings(15)
@given(
    seed=seeds,
    numeric=numeric_columns,
    n_zones=st.integers(1, 12),
    rows=st.integers(2, 150),
    alpha=st.floats(1e-2, 1e2),
)
def test_schur_solve_equals_lstsq_ridge(seed, n_zones, rows, numeric, alpha):
    rng = np.random.default_rng(seed)
    zones = rng.choice(np.arange(1, N_ZONES), n_zones, replace=False)  # a random zone subset, anywhere in 1..265
    enc = _encoded(rng, rows, numeric, zones)
    weights = solve.solve(stats.compute(enc), alpha)
    intercept, prediction = _ridge_by_lstsq(enc, alpha)
    # Normal equations square lstsq's condition number (here at most ~rows/alpha ≈ 1.5e4 relative to
    # minutes of ~10): 1e-8 minutes leaves four orders of headroom and still catches any wrong term.
    np.testing.assert_allclose(weights.pair_prediction()[enc.pair] + enc.x @ weights.numeric, prediction, rtol=0, atol=1e-8)
    assert weights.intercept == pytest.approx(intercept, abs=1e-8)
    absent = np.setdiff1d(np.arange(N_ZONES), zones)
    assert not weights.pu[absent].any() and not weights.do[absent].any()


def _predict_term_by_term(w: solve.Weights, pu: np.ndarray, do: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A row's terms added one by one, an unknown zone (-1) adding nothing: what the lookup table must give."""
    pu0, do0 = np.where(pu >= 0, pu, 0), np.where(do >= 0, do, 0)
    pair = np.where((pu >= 0) & (do >= 0), w.pair[pu0 * N_ZONES + do0], 0.0)
    return np.asarray(w.intercept + np.where(pu >= 0, w.pu[pu0], 0.0) + np.where(do >= 0, w.do[do0], 0.0) + pair + x @ w.numeric)


@_settings(25)
@given(seed=seeds, numeric=st.integers(0, 2), rows=st.integers(0, 300), unknown=st.floats(0, 1))
def test_the_lookup_table_predicts_the_bits_of_the_terms_added_row_by_row(seed, numeric, rows, unknown):
    rng = np.random.default_rng(seed)
    weights = solve.Weights(
        float(rng.normal(12, 5)),
        rng.normal(size=N_ZONES),
        rng.normal(size=N_ZONES),
        rng.normal(size=N_ZONES * N_ZONES) * (rng.random(N_ZONES * N_ZONES) < 0.3),  # pairs never seen weigh 0
        rng.normal(size=numeric),
    )
    spec = FeatureSpec(numeric=("trip_distance", "passenger_count")[:numeric])
    pu, do = (np.where(rng.random(rows) < unknown, -1, rng.integers(1, N_ZONES, rows)) for _ in range(2))
    x = rng.normal(size=(rows, numeric))
    predicted = Model(weights, spec).predict_codes(pu, do, x)
    assert predicted.tobytes() == _predict_term_by_term(weights, pu, do, x).tobytes()


# --- schema normalisation on drifted schemas -----------------------------------------------------------

START = datetime(2023, 1, 1)
OPTIONAL = ("passenger_count", "trip_distance", "airport_fee", "VendorID", "store_and_fwd_flag")
WANTED = (PICKUP, DROPOFF, PU, DO, *OPTIONAL)


def _canonical(draw: st.DrawFn, rows: int) -> pa.Table:
    """A table already in canonical names and types: what every drifted variant must normalise to."""
    seconds = draw(st.lists(st.integers(0, 31 * 86_400), min_size=rows, max_size=rows))
    minutes = draw(st.lists(st.integers(-5, 120), min_size=rows, max_size=rows))
    null = st.none()

    def ids(high: int) -> pa.Array:
        return pa.array(draw(st.lists(null | st.integers(1, high), min_size=rows, max_size=rows)), pa.int32())

    pick = [START + timedelta(seconds=s) for s in seconds]
    return pa.table(
        {
            PICKUP: pa.array(pick, pa.timestamp("us")),
            DROPOFF: pa.array([p + timedelta(minutes=m) for p, m in zip(pick, minutes)], pa.timestamp("us")),
            PU: ids(265),
            DO: ids(265),
            "passenger_count": pa.array(draw(st.lists(null | st.integers(0, 6), min_size=rows, max_size=rows)), pa.float64()),
            "trip_distance": pa.array(draw(st.lists(null | st.integers(0, 5_000), min_size=rows, max_size=rows)), pa.float64()) / 100,
            "airport_fee": pa.array(draw(st.lists(null | st.sampled_from([0.0, 1.25, 1.75]), min_size=rows, max_size=rows)), pa.float64()),
            "VendorID": ids(2),
            "store_and_fwd_flag": pa.array(draw(st.lists(null | st.sampled_from(["Y", "N"]), min_size=rows, max_size=rows)), pa.string()),
        }
    )


def _drift_name(draw: st.DrawFn, canonical: str) -> str:
    name = draw(st.sampled_from(["tpep_", "lpep_", ""])) + canonical if canonical in (PICKUP, DROPOFF) else canonical
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in name)


def _drift_values(draw: st.DrawFn, canonical: str, column: pa.Array) -> pa.Array:
    """The same values in a type some TLC vintage (or another writer) might have used."""
    if canonical in (PICKUP, DROPOFF):
        unit = draw(st.sampled_from(["s", "ms", "us", "ns"]))
        tz = draw(st.sampled_from([None, "UTC", "America/New_York"]))
        drifted = column.cast(pa.timestamp(unit, tz))
        if unit == "ns":  # sub-microsecond digits, which a microsecond model cannot use
            jitter = pa.array(draw(st.lists(st.integers(0, 999), min_size=len(column), max_size=len(column))), pa.int64())
            drifted = pc.add(drifted.cast(pa.int64()), jitter).cast(pa.timestamp(unit, tz))
        return drifted
    if canonical in (PU, DO, "VendorID"):
        kind = draw(st.sampled_from(["int16", "int32", "int64", "uint16", "float32", "float64", "float64-nan", "string", "dictionary"]))
        if kind == "float64-nan":  # a writer that stores missing floats as NaN rather than null
            return pa.array(column.cast(pa.float64()).to_numpy(zero_copy_only=False), from_pandas=False)
        if kind == "dictionary":
            return column.dictionary_encode()
        return column.cast(kind)
    if canonical == "store_and_fwd_flag":
        return column.cast(draw(st.sampled_from([pa.string(), pa.large_string()])))
    # Not decimals: Arrow's decimal-to-double cast can be one ulp off (0.47 -> 0.47000000000000003).
    kind = draw(st.sampled_from(["float32-exact", "float64", "int64"]))
    if kind == "int64":  # only whole-number columns are ever stored as integers
        values = column.to_pylist()
        assume(all(v is None or float(v).is_integer() for v in values))
        return column.cast(pa.int64())
    if kind == "float32-exact":
        assume(all(v is None or float(np.float32(v)) == v for v in column.to_pylist()))
        return column.cast(pa.float32())
    return column


@st.composite
def drifted_tables(draw: st.DrawFn) -> tuple[pa.Table, pa.Table, list[str]]:
    """(canonical table, a drifted file's table, the optional columns the file lacks)."""
    canonical = _canonical(draw, draw(st.integers(1, 12)))
    missing = draw(st.lists(st.sampled_from(OPTIONAL), unique=True, max_size=2))
    columns = {_drift_name(draw, c): _drift_values(draw, c, canonical[c].combine_chunks()) for c in WANTED if c not in missing}
    for name in draw(st.lists(st.from_regex(r"[a-z]{3,8}_extra", fullmatch=True), unique=True, max_size=3)):
        columns[name] = pa.array(draw(st.lists(st.floats(allow_nan=True), min_size=len(canonical), max_size=len(canonical))))
    names = draw(st.permutations(list(columns)))
    return canonical, pa.table({n: columns[n] for n in names}), missing


@_settings(60)
@given(case=drifted_tables())
def test_drifted_schemas_normalise_to_the_canonical_table(case):
    canonical, drifted, missing = case
    present = tuple(c for c in WANTED if c not in missing)
    out = normalize(drifted, column_mapping(drifted.schema, present, "f.parquet"), "f.parquet")
    assert out.equals(canonical.select(list(present)))
    for column in missing:
        with pytest.raises(PipelineError, match=rf"^f\.parquet: missing required column '{column}'$"):
            column_mapping(drifted.schema, (*present, column), "f.parquet")


# --- month specs round-trip ------------------------------------------------------------------------------

months = st.builds(Month, st.integers(2000, 2100), st.integers(1, 12))


@st.composite
def month_specs(draw: st.DrawFn) -> tuple[str, set[Month]]:
    """A spec of lists and ranges (padded with spaces, ranges up to 2100-12), and the months it names."""
    parts, named = [], set()
    for first in draw(st.lists(months, min_size=1, max_size=5)):
        span = draw(st.integers(0, min(30, (2100 - first.year) * 12 + 12 - first.month)))
        named.update(first.shift(i) for i in range(span + 1))
        pad = draw(st.sampled_from(["", " "]))
        parts.append(f"{pad}{first}{pad}" if span == 0 and draw(st.booleans()) else f"{pad}{first}:{first.shift(span)}{pad}")
    return ",".join(parts), named


@_settings(100)
@given(case=month_specs())
def test_month_specs_round_trip(case):
    spec, named = case
    parsed = parse_months(spec)
    assert parsed == sorted(named)
    assert parse_months(",".join(str(m) for m in parsed)) == parsed


#: Zeros of some Unicode digit blocks (Arabic-Indic, Devanagari, fullwidth): ``int()`` reads them all.
_ZEROS = (0x30, 0x660, 0x966, 0xFF10)


@st.composite
def month_texts(draw: st.DrawFn) -> str:
    """A valid month whose digits may come from other scripts, or any short text."""
    if draw(st.booleans()):
        return draw(st.text(max_size=9))
    return "".join(chr(draw(st.sampled_from(_ZEROS)) + int(c)) if c.isdigit() else c for c in str(draw(months)))


@_settings(200)
@given(text=month_texts())
def test_a_month_is_either_parsed_back_to_its_text_or_refused(text):
    try:
        month = Month.parse(text)
    except PipelineError as exc:
        assert "\n" not in str(exc)
        return
    assert str(month) == text.strip()


def _splitmix64(position: int, salt: int, seed: int, stream: int = 0) -> int:
    """The row hash in Python integers, written from its definition (pipeline.core.hashing)."""
    mask = (1 << 64) - 1
    z = (((salt << 40) & mask) ^ position) + ((seed * 0x9E3779B97F4A7C15 + stream) & mask)
    z &= mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


@given(
    start=st.integers(0, 1 << 40),
    rows=st.integers(0, 3 * (1 << 16) + 7),  # across the 2^16-row blocks the hash works in
    salt=st.integers(0, 30_000),
    seed=st.integers(-(1 << 31), 1 << 31),
    folds=st.integers(2, 10),
)
@_settings(25)
def test_folds_and_hashes_are_splitmix64_of_the_row_position(start, rows, salt, seed, folds):
    position = np.arange(start, start + rows, dtype=np.int64)
    hashes, fold = hashing.row_hash(position, salt, seed), fold_of(position, salt, seed, folds)
    assert hashes.dtype == np.uint64 and fold.dtype == np.int64 and len(hashes) == len(fold) == rows
    sample = sorted({0, rows // 2, (1 << 16) - 1, 1 << 16, rows - 1} & set(range(rows)))
    for i in sample:
        expected = _splitmix64(start + i, salt, seed)
        assert int(hashes[i]) == expected and int(fold[i]) == expected % folds
    assert (fold == (hashes % np.uint64(folds)).astype(np.int64)).all()
    keys = hashing.sample_key(position[:50], salt, seed)
    assert [int(k) for k in keys] == [_splitmix64(start + i, salt, seed, hashing.SAMPLE_STREAM) for i in range(min(rows, 50))]
