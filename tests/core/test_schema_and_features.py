"""Schema drift across TLC years normalises to one shape, and features match the seed's filter."""

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.features import N_ZONES, FeatureSpec, encode
from pipeline.core.schema import DO, DROPOFF, PICKUP, PU, column_mapping, normalize
from pipeline.edge import reader
from pipeline.errors import PipelineError

START = datetime(2023, 1, 1, 8, 0)
MINUTES = [0.5, 1.0, 12.25, 60.0, 60.5, -3.0]  # the seed keeps 1 <= minutes <= 60


def _yellow_2023_01(unit="us"):
    """Like 2023-01: int64 ids, double passenger_count, lowercase airport_fee."""
    pick = [START + timedelta(hours=i) for i in range(len(MINUTES))]
    drop = [p + timedelta(minutes=m) for p, m in zip(pick, MINUTES)]
    return pa.table(
        {
            "VendorID": pa.array([1] * 6, pa.int64()),
            "tpep_pickup_datetime": pa.array(pick, pa.timestamp(unit)),
            "tpep_dropoff_datetime": pa.array(drop, pa.timestamp(unit)),
            "passenger_count": pa.array([1.0, None, 2.0, 1.0, 1.0, 1.0]),
            "trip_distance": pa.array([0.1, 0.5, 3.0, 10.0, 11.0, 1.0]),
            "PULocationID": pa.array([1, 2, 3, 265, 5, 6], pa.int64()),
            "DOLocationID": pa.array([7, 8, 9, 264, 11, 12], pa.int64()),
            "airport_fee": pa.array([0.0, 1.25, 0.0, 0.0, 0.0, 0.0]),
        }
    )


def _yellow_2023_02():
    """Like 2023-02: int32 ids, int64 passenger_count, capitalised Airport_fee, ns timestamps."""
    t = _yellow_2023_01(unit="ns")
    return pa.table(
        {
            "VendorID": t["VendorID"].cast(pa.int32()),
            "tpep_pickup_datetime": t["tpep_pickup_datetime"],
            "tpep_dropoff_datetime": t["tpep_dropoff_datetime"],
            "passenger_count": pa.array([1, None, 2, 1, 1, 1], pa.int64()),
            "trip_distance": t["trip_distance"],
            "PULocationID": t["PULocationID"].cast(pa.int32()),
            "DOLocationID": t["DOLocationID"].cast(pa.int32()),
            "Airport_fee": t["airport_fee"],
        }
    )


def _green():
    t = _yellow_2023_01()
    return pa.table(
        {
            "lpep_pickup_datetime": t["tpep_pickup_datetime"],
            "lpep_dropoff_datetime": t["tpep_dropoff_datetime"],
            "PULocationID": t["PULocationID"].cast(pa.float64()),
            "DOLocationID": t["DOLocationID"],
            "trip_distance": t["trip_distance"],
        }
    )


WANTED = (PICKUP, DROPOFF, PU, DO, "passenger_count", "airport_fee", "trip_distance")


@pytest.mark.parametrize("make", [_yellow_2023_01, _yellow_2023_02])
def test_yellow_vintages_normalise_to_the_same_table(make):
    table = make()
    out = normalize(table, column_mapping(table.schema, WANTED, "f.parquet"), "f.parquet")
    reference = _yellow_2023_01()
    ref = normalize(reference, column_mapping(reference.schema, WANTED, "r"), "r")
    assert out.equals(ref)
    assert out.schema.field(PICKUP).type == pa.timestamp("us")
    assert out.schema.field(PU).type == pa.int32()
    assert out.schema.field("passenger_count").type == pa.float64()
    assert out["passenger_count"].null_count == 1


def test_green_pickup_names_and_float_ids():
    table = _green()
    out = normalize(table, column_mapping(table.schema, (PICKUP, DROPOFF, PU, DO), "g"), "g")
    assert out.column_names == [PICKUP, DROPOFF, PU, DO]
    assert out[PU].to_pylist() == [1, 2, 3, 265, 5, 6]


def test_missing_column_names_file_and_column():
    with pytest.raises(PipelineError, match=r"jan\.parquet: missing required column 'DOLocationID'"):
        column_mapping(_yellow_2023_01().drop(["DOLocationID"]).schema, WANTED, "jan.parquet")


def test_encode_keeps_the_seed_window_and_codes_pairs():
    table = _yellow_2023_01()
    enc = encode(normalize(table, column_mapping(table.schema, WANTED, "f"), "f"), FeatureSpec(numeric=("trip_distance",)))
    assert enc.position.tolist() == [1, 2, 3]  # 1.0, 12.25 and 60.0 minutes
    np.testing.assert_allclose(enc.y, [1.0, 12.25, 60.0])
    assert enc.pair.tolist() == [2 * N_ZONES + 8, 3 * N_ZONES + 9, 265 * N_ZONES + 264]
    np.testing.assert_allclose(enc.x[:, 0], [0.5, 3.0, 10.0])


def test_reader_plans_row_group_ranges_and_reads_them(tmp_path):
    table = pa.concat_tables([_yellow_2023_02()] * 10)  # 60 rows
    path = tmp_path / "yellow_tripdata_2023-02.parquet"
    pq.write_table(table, path, row_group_size=7)
    layout = reader.inspect(path, WANTED)
    assert layout.rows == 60 and len(layout.group_rows) == 9
    chunks = reader.plan(layout, target_rows=20)
    assert [(c.first, c.stop, c.offset, c.rows) for c in chunks] == [(0, 3, 0, 21), (3, 6, 21, 21), (6, 9, 42, 18)]
    parts = [reader.read(layout, c) for c in chunks]
    assert pa.concat_tables(parts).equals(normalize(table, layout.mapping, "x"))


def test_corrupt_parquet_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "yellow_tripdata_2023-01.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(PipelineError) as info:
        reader.inspect(path, WANTED)
    assert str(path) in str(info.value) and "corrupt" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("ids", "kind"),
    [([1, None, 2**31 - 1, -(2**31)], pa.int64()), ([None, None], pa.int64()), ([7, 265], pa.uint64()), ([3, 4], pa.int16())],
)
def test_ids_narrow_to_int32_exactly_when_they_fit(ids, kind):
    table = pa.table({PU: pa.array(ids, kind)})
    out = normalize(table, {PU: PU}, "f.parquet")
    assert out.schema.field(PU).type == pa.int32()
    assert out[PU].to_pylist() == ids


@pytest.mark.parametrize(("ids", "kind"), [([1, 2**31], pa.int64()), ([-(2**31) - 1], pa.int64()), ([2**40, None], pa.uint64())])
def test_ids_that_do_not_fit_int32_are_refused_naming_the_file(ids, kind):
    table = pa.table({PU: pa.array(ids, kind)})
    with pytest.raises(PipelineError, match=r"f\.parquet: column 'PULocationID' has unusable type"):
        normalize(table, {PU: PU}, "f.parquet")
