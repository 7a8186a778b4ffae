"""The defaults on real TLC green months, tried as a new user would: retrain picks a champion by itself, and it serves.

The reference is computed in the same test: scikit-learn's ``HistGradientBoostingRegressor()``
with its defaults on the pickup and dropoff zones, ``trip_distance``, the pickup hour and day of
week, trained on the same rows (2021-01 and 2021-02) and validated on the same month (2021-03).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.service.source import ModelSource
from pipeline.service.testing import running_service
from tests.cli.test_cli import _cli, _one_error_line
from tests.conftest import DaskProcesses, cli_here

pytestmark = pytest.mark.slow

GREEN = Path(__file__).resolve().parents[1] / "data" / "tlc-green"
#: The request the docs show: a 3.2-mile trip from zone 132 (JFK) to 236 on a Monday morning.
REQUEST = [{"PULocationID": 132, "DOLocationID": 236, "trip_distance": 3.2, "lpep_pickup_datetime": "2021-03-15T08:30:00"}]


def _frame(month: str) -> pd.DataFrame:
    frame = pd.read_parquet(GREEN / f"green_tripdata_{month}.parquet")
    frame["duration"] = (frame.lpep_dropoff_datetime - frame.lpep_pickup_datetime).dt.total_seconds() / 60
    frame = frame[(frame.duration >= 1) & (frame.duration <= 60)]
    frame["hour"] = frame.lpep_pickup_datetime.dt.hour
    frame["day_of_week"] = frame.lpep_pickup_datetime.dt.day_of_week
    return frame


def _hist_gradient_boosting_defaults() -> float:
    from sklearn.ensemble import HistGradientBoostingRegressor

    columns = ["PULocationID", "DOLocationID", "trip_distance", "hour", "day_of_week"]
    train = pd.concat([_frame("2021-01"), _frame("2021-02")])
    val = _frame("2021-03")
    model = HistGradientBoostingRegressor().fit(train[columns], train.duration)
    return float(np.sqrt(np.mean((model.predict(val[columns]) - val.duration) ** 2)))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str, one_worker: DaskProcesses) -> Path:
    folder = tmp_path_factory.mktemp("real") / "registry"
    args = ["retrain", "--taxi", "green", "--source", str(GREEN), "--registry", str(folder), "--as-of", "2021-04-15"]
    args += ["--scheduler", one_worker.address]  # the session's one worker: the defaults' choice, not the cluster, is under test
    result = _cli(*args, env={"PREFECT_API_URL": prefect_api_url})
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_retrain_on_its_defaults_beats_hist_gradient_boosting_defaults(registry: Path):
    champion = json.loads((registry / "champion.json").read_text())["version"]
    metrics = json.loads((registry / "versions" / champion / "metrics.json").read_text())
    assert metrics["train_months"] == ["2021-01", "2021-02"] and metrics["val_month"] == "2021-03"
    assert metrics["train_rows"] == 73_908 + 61_921 and metrics["val_rows"] == 80_372
    reference = _hist_gradient_boosting_defaults()
    assert metrics["val_rmse"] <= 5.55
    assert metrics["val_rmse"] <= reference, (metrics["val_rmse"], reference)
    assert [i["month"] for i in metrics["inputs"]] == ["2021-01", "2021-02", "2021-03"]  # lineage


def _post(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_champion_answers_the_docs_request(registry: Path, tmp_path: Path):
    with running_service(ModelSource.registry(registry), tmp_path / "serve.log") as url:
        with urllib.request.urlopen(f"{url}/model", timeout=30) as answer:
            described = json.loads(answer.read())
        status, body = _post(f"{url}/predict", REQUEST)
        missing_status, missing = _post(f"{url}/predict", [{k: v for k, v in REQUEST[0].items() if k != "lpep_pickup_datetime"}])
    assert "lpep_pickup_datetime" in described["fields"] and "trip_distance" in described["fields"]
    assert status == 200 and body["model"]["version"] == "v0001"
    (minutes,) = body["minutes"]
    assert 1.0 <= minutes <= 60.0
    assert missing_status == 422 and missing["detail"][0]["loc"] == ["body", 0, "lpep_pickup_datetime"]


def test_train_with_the_courses_features_prints_the_exact_least_squares(tmp_path: Path, prefect_api_url: str, one_worker: DaskProcesses):
    args = ["train", "--taxi", "green", "--source", str(GREEN), "--train-months", "2021-01", "--val-month", "2021-02"]
    result = _cli(
        *args, "--features", "PU_DO,trip_distance", "--alphas", "1e-8", "--folds", "0", "--output", str(tmp_path / "out"),
        "--scheduler", one_worker.address, env={"PREFECT_API_URL": prefect_api_url, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "│ validation RMSE (min) │" in result.stdout and "7.4808" in result.stdout
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["features"] == ["PU_DO", "trip_distance"]


def test_quantile_bins_are_fixed_on_the_training_rows_before_the_pass(tmp_path: Path, prefect_api_url: str, one_worker: DaskProcesses):
    """``trip_distance:q16`` gets the 16-quantiles of 2021-01's kept trips (all of them: fewer than the sample), computed
    here with pandas, written into the term; the model is the one trained on those edges given by hand."""
    train = _frame("2021-01")
    edges = np.unique(np.quantile(train.trip_distance.fillna(0).to_numpy(), np.arange(1, 16) / 16))
    args = ["train", "--taxi", "green", "--source", str(GREEN), "--train-months", "2021-01", "--val-month", "2021-02"]
    flags = ("--alphas", "3", "--folds", "0", "--scheduler", one_worker.address)
    metrics = {}
    for name, term in (("quantiles", "trip_distance:q16"), ("edges", f"trip_distance:[{','.join(repr(float(e)) for e in edges)}]")):
        result = _cli(
            *args, "--features", f"PU_DO,{term}", *flags, "--output", str(tmp_path / name), env={"PREFECT_API_URL": prefect_api_url}
        )
        assert result.returncode == 0, result.stderr[-3000:]
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    pu_do, binned = metrics["quantiles"]["features"]
    assert pu_do == "PU_DO" and binned.startswith("trip_distance:q16[")
    assert np.array_equal([float(e) for e in binned.removeprefix("trip_distance:q16[").removesuffix("]").split(",")], edges)
    assert metrics["quantiles"]["val_rmse"] == metrics["edges"]["val_rmse"]
    assert json.loads((tmp_path / "quantiles" / "model.json").read_text())["features"]["terms"] == [pu_do, binned]


@pytest.mark.parametrize(
    ("features", "named"),
    [
        ("PU_DO,trip_distance:[5,2]", "trip_distance:[5,2]"),
        ("PU_DO,hour/7", "hour/7"),
        ("PU_DO,trip_distance:q1", "trip_distance:q1"),
        ("PU_DO,trip_distance:log48*hour_of_week", "trip_distance:log48*hour_of_week"),
        ("PU_DO,fare_amount_typo", "fare_amount_typo"),
    ],
)
def test_a_bad_term_is_one_line_naming_it_and_nothing_is_written(features: str, named: str, tmp_path: Path):
    args = ["train", "--taxi", "green", "--source", str(GREEN), "--train-months", "2021-01", "--val-month", "2021-02"]
    result = cli_here(*args, "--features", features, "--output", str(tmp_path / "out"))
    line = _one_error_line(result)
    assert named in line
    assert not (tmp_path / "out").exists()
