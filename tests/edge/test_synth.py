"""The synthetic TLC months: exact schema, determinism, warts, zone structure, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.months import Month
from pipeline.core.schema import REQUIRED, column_mapping, normalize
from pipeline.edge.synth import month_filename, synth_month, write_months, write_table
from pipeline.errors import PipelineError

JAN, FEB = Month(2023, 1), Month(2023, 2)
ROWS = 100_000

YELLOW_COLUMNS = [
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

GREEN_COLUMNS = [
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


def _with_minutes(table: pa.Table, prefix: str = "tpep") -> pd.DataFrame:
    df = table.to_pandas()
    seconds = (df[f"{prefix}_dropoff_datetime"] - df[f"{prefix}_pickup_datetime"]).dt.total_seconds()
    return df.assign(minutes=seconds / 60.0)


@pytest.fixture(scope="module")
def jan_table() -> pa.Table:
    return synth_month(JAN, ROWS, seed=7)


@pytest.fixture(scope="module")
def jan(jan_table: pa.Table) -> pd.DataFrame:
    return _with_minutes(jan_table)


@pytest.fixture(scope="module")
def feb() -> pd.DataFrame:
    return _with_minutes(synth_month(FEB, ROWS, seed=7))


@pytest.fixture(scope="module")
def green_table() -> pa.Table:
    return synth_month(JAN, 30_000, seed=7, taxi="green")


# --- schema -------------------------------------------------------------------------


def test_yellow_schema_is_exactly_the_2023_01_file(jan_table: pa.Table) -> None:
    assert [(f.name, f.type) for f in jan_table.schema] == YELLOW_COLUMNS
    assert jan_table.num_rows == ROWS


def test_green_schema_is_exactly_the_real_green_file(green_table: pa.Table) -> None:
    assert [(f.name, f.type) for f in green_table.schema] == GREEN_COLUMNS
    assert green_table.num_rows == 30_000
    assert green_table.column("ehail_fee").null_count == green_table.num_rows
    df = green_table.to_pandas()
    assert set(df.trip_type.dropna().unique()) <= {1.0, 2.0}
    assert set(df.payment_type.dropna().unique()) <= {1.0, 2.0, 3.0, 4.0}
    nulls = df.passenger_count.isna()
    for name in ("RatecodeID", "store_and_fwd_flag", "payment_type", "trip_type", "congestion_surcharge"):
        assert (df[name].isna() == nulls).all(), name


@pytest.mark.parametrize("taxi", ["yellow", "green"])
def test_pipeline_schema_normalises_synthetic_files(taxi: str) -> None:
    table = synth_month(JAN, 5_000, seed=1, taxi=taxi)
    mapping = column_mapping(table.schema, REQUIRED, "synthetic")
    out = normalize(table, mapping, "synthetic")
    assert out.column_names == list(REQUIRED)
    assert out.num_rows == 5_000


# --- arguments and determinism ----------------------------------------------------------


def test_unknown_taxi_is_a_pipeline_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="fhv"):
        synth_month(JAN, 10, taxi="fhv")
    with pytest.raises(PipelineError, match="fhv"):
        write_months(tmp_path / "out", [JAN], 10, taxi="fhv")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rows", [0, -5])
def test_non_positive_rows_is_a_pipeline_error(rows: int) -> None:
    with pytest.raises(PipelineError, match="rows"):
        synth_month(JAN, rows)


def test_negative_seed_is_a_pipeline_error() -> None:
    with pytest.raises(PipelineError, match="seed"):
        synth_month(JAN, 10, seed=-1)


def test_one_row_works() -> None:
    assert synth_month(JAN, 1).num_rows == 1


def test_same_arguments_same_table(jan_table: pa.Table) -> None:
    synth_month(FEB, 1_000, seed=7)  # generating another month first changes nothing
    assert synth_month(JAN, ROWS, seed=7).equals(jan_table)


def test_seed_month_and_taxi_change_the_trips(jan_table: pa.Table) -> None:
    other_seed = synth_month(JAN, ROWS, seed=8)
    other_month = synth_month(FEB, ROWS, seed=7)
    assert not other_seed.equals(jan_table)
    assert not other_month.equals(jan_table)
    zones = jan_table.column("PULocationID").to_numpy()
    assert not np.array_equal(other_seed.column("PULocationID").to_numpy(), zones)
    green = synth_month(JAN, ROWS, seed=7, taxi="green")
    assert not np.array_equal(green.column("PULocationID").to_numpy(), zones)


def test_pickups_cover_the_month_sorted_with_an_hour_shape(jan: pd.DataFrame, feb: pd.DataFrame) -> None:
    for df, month, days in ((jan, JAN, 31), (feb, FEB, 28)):
        pickup = df.tpep_pickup_datetime
        assert pickup.is_monotonic_increasing
        assert pickup.min() >= pd.Timestamp(f"{month}-01")
        assert pickup.max() < pd.Timestamp(f"{month.next()}-01")
        assert pickup.dt.day.nunique() == days
        per_day = pickup.dt.day.value_counts()
        assert per_day.max() / per_day.min() < 1.3  # uniform-ish over the month
    by_hour = jan.tpep_pickup_datetime.dt.hour.value_counts(normalize=True)
    assert by_hour[18] > 3 * by_hour[4]  # evening peak, small hours quiet


# --- warts at their rates ------------------------------------------------------------------


def test_duration_warts_at_realistic_rates(jan: pd.DataFrame) -> None:
    minutes = jan.minutes
    non_positive = (minutes <= 0).mean()
    assert 0.005 <= non_positive <= 0.010, non_positive
    assert (minutes < 0).mean() > 0.002 and (minutes == 0).mean() > 0.002
    sub_minute = ((minutes > 0) & (minutes < 1)).mean()
    assert 0.007 <= sub_minute <= 0.015, sub_minute
    multi_hour = (minutes > 60).mean()
    assert 0.002 <= multi_hour <= 0.010, multi_hour
    assert (minutes > 600).sum() >= 20  # some meters left running for half a day
    in_range = minutes.between(1, 60).mean()
    assert 0.96 <= in_range <= 0.99, in_range
    typical = minutes[minutes.between(1, 60)]
    assert 5 <= typical.median() <= 30


def test_null_passenger_rows_null_the_same_columns(jan: pd.DataFrame) -> None:
    nulls = jan.passenger_count.isna()
    assert 0.02 <= nulls.mean() <= 0.03, nulls.mean()
    for name in ("RatecodeID", "store_and_fwd_flag", "congestion_surcharge", "airport_fee"):
        assert (jan[name].isna() == nulls).all(), name
    for name in ("VendorID", "trip_distance", "PULocationID", "DOLocationID", "payment_type", "total_amount"):
        assert jan[name].notna().all(), name


def test_some_zero_distances(jan: pd.DataFrame) -> None:
    zero = (jan.trip_distance == 0).mean()
    assert 0.002 <= zero <= 0.02, zero
    assert (jan.trip_distance >= 0).all()


def test_categorical_codes(jan: pd.DataFrame) -> None:
    assert set(jan.VendorID.unique()) == {1, 2}
    assert set(jan.payment_type.unique()) == {1, 2, 3, 4}
    codes = jan.RatecodeID.dropna().value_counts(normalize=True)
    assert set(codes.index) <= {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 99.0}
    assert codes[1.0] > 0.9 and 0 < codes[99.0] < 0.01
    assert set(jan.store_and_fwd_flag.dropna().unique()) == {"N", "Y"}
    assert set(jan.passenger_count.dropna().unique()) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0}


def test_money_adds_up(jan: pd.DataFrame) -> None:
    parts = ["fare_amount", "extra", "mta_tax", "tip_amount", "tolls_amount", "improvement_surcharge"]
    parts_sum = jan[parts].sum(axis=1) + jan.congestion_surcharge.fillna(0) + jan.airport_fee.fillna(0)
    assert np.allclose(jan.total_amount, parts_sum, atol=0.011)
    paid = jan[jan.payment_type <= 2]
    assert (paid.fare_amount >= 3.0).all()
    assert paid.fare_amount.corr(paid.trip_distance) > 0.8
    assert (jan[jan.payment_type == 2].tip_amount == 0).all()  # cash tips are not recorded
    assert (jan.total_amount < 0).mean() < 0.03  # refunds are rare


# --- zones -----------------------------------------------------------------------------


def test_zone_popularity_is_skewed(jan: pd.DataFrame) -> None:
    for column in ("PULocationID", "DOLocationID"):
        assert jan[column].between(1, 265).all()
    share = jan.PULocationID.value_counts(normalize=True)
    assert share.head(10).sum() > 0.25
    rare = (share.reindex(range(1, 266), fill_value=0.0) < 0.0005).sum()
    assert rare > 60  # a long tail of zones that hardly ever see a pickup
    unknown = share.get(264, 0.0) + share.get(265, 0.0)
    assert 0 < unknown < 0.02


def test_dropoffs_favour_nearby_zones(jan: pd.DataFrame) -> None:
    """From a busy zone, the more popular a dropoff zone, the shorter the ride to it."""
    rides = jan[jan.trip_distance > 0]
    correlations = []
    for pu in rides.PULocationID.value_counts().index[:5]:
        by_do = rides[rides.PULocationID == pu].groupby("DOLocationID").trip_distance.agg(["size", "median"])
        by_do = by_do[by_do["size"] >= 5]
        correlations.append(by_do["size"].corr(by_do["median"], method="spearman"))
    assert np.mean(correlations) < -0.4, correlations


def _pair_stats(df: pd.DataFrame, column: str, min_rows: int) -> pd.Series:
    ok = df[df.minutes.between(1, 60)]
    grouped = ok.groupby(["PULocationID", "DOLocationID"])[column]
    stats = grouped.mean()
    return stats[grouped.size() >= min_rows]


def test_zone_structure_is_shared_across_months(jan: pd.DataFrame, feb: pd.DataFrame) -> None:
    for column in ("minutes", "trip_distance"):
        a, b = _pair_stats(jan, column, 30), _pair_stats(feb, column, 30)
        common = a.index.intersection(b.index)
        assert len(common) > 300
        assert np.corrcoef(a[common], b[common])[0, 1] > 0.9, column
    pu_share = [df.PULocationID.value_counts(normalize=True) for df in (jan, feb)]
    top = pu_share[0].index[:20]
    assert np.corrcoef(pu_share[0][top], pu_share[1].reindex(top, fill_value=0))[0, 1] > 0.95


def test_zone_structure_is_shared_across_seeds(jan: pd.DataFrame) -> None:
    other = _with_minutes(synth_month(JAN, ROWS, seed=123))
    a, b = _pair_stats(jan, "minutes", 30), _pair_stats(other, "minutes", 30)
    common = a.index.intersection(b.index)
    assert np.corrcoef(a[common], b[common])[0, 1] > 0.9


def test_duration_is_learnable_from_zones(jan: pd.DataFrame, feb: pd.DataFrame) -> None:
    """One-hot PU + DO + PU_DO trained on January explains much of February's variance.

    Seen at 100k rows, seed 7: std ~9.2 min, validation RMSE ~5.8 min (R^2 ~0.6).
    """
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import Ridge

    def features(df: pd.DataFrame) -> tuple[list[dict[str, str]], np.ndarray]:
        ok = df[df.minutes.between(1, 60)]
        records = [{"PU": str(pu), "DO": str(do), "PU_DO": f"{pu}_{do}"} for pu, do in zip(ok.PULocationID, ok.DOLocationID)]
        return records, ok.minutes.to_numpy()

    x_train, y_train = features(jan)
    x_val, y_val = features(feb)
    vectorizer = DictVectorizer()
    model = Ridge(alpha=1.0).fit(vectorizer.fit_transform(x_train), y_train)
    rmse = float(np.sqrt(np.mean((model.predict(vectorizer.transform(x_val)) - y_val) ** 2)))
    baseline = float(np.sqrt(np.mean((y_val - y_train.mean()) ** 2)))
    assert 7.0 < y_val.std() < 12.0
    assert rmse < 0.75 * y_val.std(), (rmse, y_val.std())
    assert rmse < 0.75 * baseline, (rmse, baseline)


# --- files -----------------------------------------------------------------------------


def test_month_filename() -> None:
    assert month_filename("yellow", JAN) == "yellow_tripdata_2023-01.parquet"
    assert month_filename("green", Month(2024, 12)) == "green_tripdata_2024-12.parquet"


@pytest.mark.parametrize("taxi", ["yellow", "green"])
def test_write_months_round_trip(tmp_path: Path, taxi: str) -> None:
    out = tmp_path / "nested" / "data"
    paths = write_months(out, [JAN, FEB], 25_000, seed=3, taxi=taxi, row_group_size=10_000)
    assert paths == [out / month_filename(taxi, JAN), out / month_filename(taxi, FEB)]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temp files left
    for path, month in zip(paths, (JAN, FEB)):
        meta = pq.ParquetFile(path).metadata
        assert meta.num_row_groups == 3
        assert meta.num_rows == 25_000
        assert pq.read_table(path).equals(synth_month(month, 25_000, seed=3, taxi=taxi))


def test_write_table_failure_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = synth_month(JAN, 1_000)
    target = tmp_path / "yellow_tripdata_2023-01.parquet"

    def torn_write(table: pa.Table, where: str, **kwargs: object) -> None:
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", torn_write)
    with pytest.raises(OSError, match="disk full"):
        write_table(table, target)
    assert list(tmp_path.iterdir()) == []


def test_write_table_failure_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "month.parquet"
    old = synth_month(JAN, 500)
    write_table(old, target)

    def failing(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", failing)
    with pytest.raises(KeyboardInterrupt):
        write_table(synth_month(FEB, 500), target)
    assert [p.name for p in tmp_path.iterdir()] == ["month.parquet"]
    assert pq.read_table(target).equals(old)


def test_write_table_replaces_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "month.parquet"
    write_table(synth_month(JAN, 500), target)
    new = synth_month(FEB, 700)
    write_table(new, target, row_group_size=100)
    assert pq.ParquetFile(target).metadata.num_row_groups == 7
    assert pq.read_table(target).equals(new)
    assert [p.name for p in target.parent.iterdir()] == ["month.parquet"]
