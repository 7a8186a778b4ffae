"""The boosted model's pure parts on the real green months: the design, the rows kept, clipping, the files, the service."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline.core import boosted
from pipeline.core.features import FeatureSpec
from pipeline.core.months import Month
from pipeline.core.schema import DO, PU
from pipeline.edge import boosted_rows, chunks, reader
from pipeline.edge.model_files import BOOSTED_FORMAT, BOOSTER_FILE, META_FILE, load_any, load_boosted, save_boosted
from pipeline.errors import PipelineError
from pipeline.service.payload import TripParser

REAL = Path(__file__).resolve().parents[1] / "data" / "tlc-green"
#: Few rounds: these tests are about plumbing, not quality.
PARAMS = boosted.BoostedParams(rounds=15, max_depth=6)


def _plan(month: int) -> reader.MonthPlan:
    return reader.locate(str(REAL), "green", Month(2021, month), boosted.SPEC.columns())


@pytest.fixture(scope="module")
def train_rows() -> boosted.Rows:
    return boosted_rows.load([_plan(1)])


@pytest.fixture(scope="module")
def model(train_rows: boosted.Rows) -> boosted.BoostedModel:
    booster = boosted.train_local(train_rows.design, train_rows.minutes, PARAMS, nthread=1)
    return boosted.BoostedModel(booster, boosted.SPEC, PARAMS, {"taxi": "green"})


def test_kept_rows_are_the_course_counts_and_the_linear_paths_rows() -> None:
    for month, expected in ((1, 73_908), (2, 61_921)):
        plan = _plan(month)
        rows = boosted_rows.load([plan])
        linear = chunks.load_rows([plan], FeatureSpec(numeric=("trip_distance",)), 1, 0, None)
        assert rows.rows == linear.rows == expected
        np.testing.assert_array_equal(rows.minutes, linear.y)
        np.testing.assert_array_equal(rows.design[boosted.DISTANCE].to_numpy(), linear.x[:, 0].astype(np.float32))


def test_design_has_fixed_zone_categories_and_the_wall_clock_hour_and_weekday() -> None:
    stamps = np.array(["2021-01-04T00:30", "2021-01-10T23:59", "1969-12-31T23:00"], dtype="datetime64[us]").view(np.int64)
    frame = boosted.design(np.array([1, 265, -1]), np.array([7, 0, 300]), np.array([1.5, np.nan, 2.0]), stamps)
    assert list(frame.columns) == list(boosted.FEATURES)
    for zone in (PU, DO):
        assert list(frame[zone].cat.categories) == list(range(1, 266))
    assert frame[PU].tolist()[:2] == [1, 265] and pd.isna(frame[PU].iloc[2])
    assert pd.isna(frame[DO].iloc[1]) and pd.isna(frame[DO].iloc[2])
    assert frame[boosted.HOUR].tolist() == [0, 23, 23]
    assert frame[boosted.WEEKDAY].tolist() == [0, 6, 2]  # Monday, Sunday, Wednesday 1969-12-31


def test_holdout_selection_is_fold_zero_of_the_linear_split() -> None:
    plans = [_plan(1), _plan(2)]
    linear = chunks.load_rows(plans, FeatureSpec(numeric=("trip_distance",)), 5, 3, None)
    held = boosted_rows.load(plans, select=boosted_rows.Selection(5, 0, 3, held_out=True))
    kept = boosted_rows.load(plans, select=boosted_rows.Selection(5, 0, 3, held_out=False))
    assert held.rows == int(np.count_nonzero(linear.fold == 0)) and held.rows + kept.rows == linear.rows
    np.testing.assert_array_equal(held.minutes, linear.y[linear.fold == 0])


def test_parts_of_a_chunk_together_are_the_chunk() -> None:
    plan = _plan(2)
    (chunk,) = reader.plan(plan.layout, 1 << 40)
    parts = [boosted_rows.chunk_rows(plan, chunk, part=part) for part in boosted_rows.split(chunk, 3)]
    whole = boosted_rows.chunk_rows(plan, chunk)
    np.testing.assert_array_equal(np.concatenate([p.position for p in parts]), whole.position)
    np.testing.assert_array_equal(np.concatenate([p.minutes for p in parts]), whole.minutes)


def test_predictions_are_clipped_to_the_training_window(model: boosted.BoostedModel) -> None:
    n = 2_000
    rng = np.random.default_rng(0)
    stamps = np.datetime64("2021-02-01", "us").astype(np.int64) + rng.integers(0, 28 * 86_400_000_000, n)
    distance = np.concatenate([rng.uniform(0, 5, n // 2), rng.uniform(1e3, 1e5, n - n // 2)])  # the real outliers' sizes
    predicted = model.predict_codes(rng.integers(-1, 266, n), rng.integers(-1, 266, n), distance[:, None], pickup=stamps)
    assert predicted.min() >= 1.0 and predicted.max() <= 60.0
    # Trees fitted on 1..60 seldom leave it: a booster fitted to targets outside it shows the clip at work.
    frame = boosted.design(np.full(n, 132), np.full(n, 1), distance, stamps)
    wild = boosted.train_local(frame, np.where(distance > 100, 500.0, -50.0), boosted.BoostedParams(rounds=5, eta=1.0), nthread=1)
    assert wild.inplace_predict(frame).max() > 60 and wild.inplace_predict(frame).min() < 1
    clipped = boosted.BoostedModel(wild).predict_codes(np.full(n, 132), np.full(n, 1), distance[:, None], pickup=stamps)
    assert sorted(set(clipped.tolist())) == [1.0, 60.0]


def test_predict_takes_month_file_names_and_agrees_with_the_chunk_path(model: boosted.BoostedModel) -> None:
    raw = pq.read_table(REAL / "green_tripdata_2021-02.parquet").slice(0, 500)
    plan = _plan(2)
    (chunk,) = reader.plan(plan.layout, 1 << 40)
    table = reader.read(plan.layout, chunk).slice(0, 500)
    np.testing.assert_array_equal(model.predict(raw.to_pandas()), model.predict_table(table))
    with pytest.raises(PipelineError, match="lpep_pickup_datetime"):
        model.predict(raw.drop_columns(["lpep_pickup_datetime"]))
    with pytest.raises(PipelineError, match="pickup time"):
        model.predict_codes(np.array([1]), np.array([2]), np.array([[1.0]]))


def test_saved_in_xgboost_format_not_pickle_and_loads_to_identical_predictions(model: boosted.BoostedModel, tmp_path: Path) -> None:
    save_boosted(model, tmp_path)
    data = (tmp_path / BOOSTER_FILE).read_bytes()
    assert data[:1] == b"{"  # UBJSON object, as XGBoost writes it; a pickle starts with 0x80
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["format"] == BOOSTED_FORMAT and meta["design"] == list(boosted.FEATURES) and meta["xgboost"]["rounds"] == 15
    loaded = load_any(tmp_path)
    assert isinstance(loaded, boosted.BoostedModel) and loaded.params == PARAMS and loaded.metadata["taxi"] == "green"
    table = reader.read(_plan(2).layout, reader.plan(_plan(2).layout, 1 << 40)[0])
    assert loaded.predict_table(table).tobytes() == model.predict_table(table).tobytes()


def test_a_damaged_or_foreign_booster_file_is_one_line(model: boosted.BoostedModel, tmp_path: Path) -> None:
    save_boosted(model, tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "design": ["a", "b"]}))
    with pytest.raises(PipelineError, match="design"):
        load_boosted(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "files": {}}))
    (tmp_path / BOOSTER_FILE).write_bytes(pickle.dumps({"not": "a booster"}))
    with pytest.raises(PipelineError, match="not a readable XGBoost model"):
        load_any(tmp_path)


def test_the_service_asks_for_the_pickup_time_named_as_in_the_month_files(model: boosted.BoostedModel, tmp_path: Path) -> None:
    from pipeline.service.app import prediction_json
    from pipeline.service.source import Served

    save_boosted(model, tmp_path)
    served = Served.build(load_any(tmp_path), None, None, 100)
    assert served.parser.pickup == "lpep_pickup_datetime" and served.format == BOOSTED_FORMAT
    trips = [
        {"PULocationID": 132, "DOLocationID": 236, "trip_distance": 3.2, "lpep_pickup_datetime": "2021-03-01T08:15:00"},
        {"PULocationID": 74, "DOLocationID": 75, "trip_distance": 25000.0, "lpep_pickup_datetime": "2021-03-06 23:40:00"},
    ]
    answer = json.loads(prediction_json(served, json.dumps(trips).encode()))
    frame = pd.DataFrame(trips).assign(lpep_pickup_datetime=lambda f: pd.to_datetime(f.lpep_pickup_datetime, format="ISO8601"))
    assert answer["minutes"] == model.predict(frame).tolist()
    assert all(1.0 <= m <= 60.0 for m in answer["minutes"])
    with pytest.raises(ValidationError, match="lpep_pickup_datetime"):
        parser = TripParser(FeatureSpec(numeric=("trip_distance",)), 10, "green", pickup=True)
        parser.parse(b'[{"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1}]')


def test_config_gives_the_boosted_model_its_columns_and_refuses_what_it_cannot_use() -> None:
    from pipeline.core.config import ConfigError, TrainConfig

    config = TrainConfig(train_months="2021-01", val_month="2021-02", output="out", model="xgboost")
    assert "trip_distance" in config.feature_spec().columns() and config.xgb_rounds == boosted.BoostedParams().rounds == 100
    with pytest.raises(ConfigError, match="fixed design"):
        TrainConfig(train_months="2021-01", val_month="2021-02", output="out", model="xgboost", numeric=("fare_amount",))
    with pytest.raises(ConfigError, match="every row"):
        TrainConfig(train_months="2021-01", val_month="2021-02", output="out", model="xgboost", max_rows=10)


def test_pa_table_with_null_pickup_predicts_with_missing_time(model: boosted.BoostedModel) -> None:
    table = pa.table(
        {
            "lpep_pickup_datetime": pa.array([None, 1_612_137_600_000_000], pa.timestamp("us")),
            "PULocationID": [132, 132],
            "DOLocationID": [236, 236],
            "trip_distance": [3.0, 3.0],
        }
    )
    predicted = model.predict(table)
    assert np.isfinite(predicted).all() and ((predicted >= 1) & (predicted <= 60)).all()


def test_a_plan_located_for_a_linear_spec_is_widened_to_the_boosted_columns() -> None:
    linear = reader.locate(str(REAL), "green", Month(2021, 2), FeatureSpec().columns())  # what retrain may hand over
    assert "trip_distance" not in linear.layout.mapping
    widened = boosted_rows.with_columns(linear)
    (chunk,) = reader.plan(widened.layout, 1 << 40)
    assert boosted_rows.chunk_rows(widened, chunk).rows == 61_921
    assert boosted_rows.with_columns(widened) is widened
