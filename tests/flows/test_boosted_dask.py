"""The boosted challenger on a real Dask cluster, against single-process XGBoost on the same rows, and end to end via the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster

from pipeline.core import boosted
from pipeline.core.months import Month
from pipeline.edge import boosted_rows, reader
from pipeline.edge.model_files import load_any
from pipeline.flows.boosted import fit_on_cluster, holdout_on_cluster, pieces, train_and_validate

pytestmark = pytest.mark.slow

REAL = Path(__file__).resolve().parents[1] / "data" / "tlc-green"
#: Fewer rounds than the default 400 keep each fit to seconds; the comparison holds at any count.
PARAMS = boosted.BoostedParams(rounds=40)


def _plan(month: int) -> reader.MonthPlan:
    return reader.locate(str(REAL), "green", Month(2021, month), boosted.SPEC.columns())


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """Two single-threaded workers in this process: xgboost.dask trains with two ranks, as on two machines."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as dask:
        yield dask


def test_every_worker_gets_partitions_of_a_one_row_group_month() -> None:
    work = pieces([_plan(1)], 4_000_000, threads=2)
    assert len(work) == 4 and sum(part[1] - part[0] for _, _, part in work if part) == _plan(1).layout.rows


def test_xgboost_dask_matches_single_process_xgboost_on_the_same_rows(client: Client) -> None:
    fit = train_and_validate(client, [_plan(1)], _plan(2), PARAMS, 4_000_000)
    assert (fit.workers, fit.train_rows, fit.val_rows) == (2, 73_908, 61_921)
    train, val = boosted_rows.load([_plan(1)]), boosted_rows.load([_plan(2)])
    local = boosted.train_local(train.design, train.minutes, PARAMS, nthread=1)
    local_rmse = boosted.rmse(boosted.predict_booster(local, val.design), val.minutes)
    assert abs(fit.val_rmse / local_rmse - 1) < 0.005, (fit.val_rmse, local_rmse)
    # the saved bytes are the booster that was validated: its RMSE, recomputed here, is the one reported
    model = boosted.BoostedModel(boosted_model_booster(fit.model), boosted.SPEC, PARAMS)
    assert boosted.rmse(boosted.predict_booster(model.booster, val.design), val.minutes) == pytest.approx(fit.val_rmse, rel=1e-9)


def boosted_model_booster(data: bytes) -> object:
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray(data))
    return booster


def test_a_fit_releases_its_training_rows_before_it_returns(client: Client) -> None:
    """XGBoost's matrix holds the persisted partitions in a reference cycle: with the collector off (as between two of
    its rare full passes), they stayed on the workers through validation until the fit collected them itself."""
    import gc
    import time

    def wanted(dask_scheduler: Any) -> list[str]:
        return [str(key) for key, state in dask_scheduler.tasks.items() if state.who_wants]

    gc.disable()
    try:
        _, rows, _ = fit_on_cluster(client, pieces([_plan(1)], 4_000_000, threads=2), PARAMS)
        deadline = time.monotonic() + 30  # a client's releases reach the scheduler in batches
        while (held := client.run_on_scheduler(wanted)) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        gc.enable()
    assert rows == 73_908 and held == []


def test_holdout_scores_fold_zero_of_the_linear_split(client: Client) -> None:
    plans = [_plan(1), _plan(2)]
    score = holdout_on_cluster(client, plans, PARAMS, folds=5, seed=0, chunk_rows=4_000_000)
    held = boosted_rows.load(plans, select=boosted_rows.Selection(5, 0, 0, held_out=True))
    rest = boosted_rows.load(plans, select=boosted_rows.Selection(5, 0, 0, held_out=False))
    assert (score.fold, score.test_rows, score.train_rows) == (0, held.rows, rest.rows)
    local = boosted.train_local(rest.design, rest.minutes, PARAMS, nthread=1)
    local_rmse = boosted.rmse(boosted.predict_booster(local, held.design), held.minutes)
    assert abs(score.rmse / local_rmse - 1) < 0.005, (score.rmse, local_rmse)


def _cli(*args: str, api: str) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess, on the session's Prefect API (a run's own API would cost seconds to start, each time)."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": api}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=600, env=env)


def test_train_model_xgboost_end_to_end_then_predict(tmp_path: Path, prefect_api_url: str) -> None:
    out = tmp_path / "model"
    common = ("--taxi", "green", "--source", str(REAL))
    done = _cli("train", *common, "--train-months", "2021-01", "--val-month", "2021-02", "--output", str(out), "--model", "xgboost",
                "--xgb-rounds", "40", "--n-workers", "2", api=prefect_api_url)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "xgboost" and metrics["train_rows"] == 73_908 and metrics["val_rows"] == 61_921
    assert 4.5 < metrics["val_rmse"] < 6.5 and metrics["cv"]["scores"][0]["fold"] == 0  # the fold-0 hold-out (default 5 folds)
    model = load_any(out)
    assert isinstance(model, boosted.BoostedModel) and (out / "model.ubj").is_file()
    # batch scoring: every row of the month, clipped, and the same numbers as the model on the file
    scored = tmp_path / "scored"
    done = _cli(
        "predict", "--model", str(out), *common, "--months", "2021-02", "--output", str(scored), "--n-workers", "2", api=prefect_api_url
    )
    assert done.returncode == 0, done.stderr[-3000:]
    parts = pq.read_table(scored / "month=2021-02").to_pandas()
    raw = pq.read_table(REAL / "green_tripdata_2021-02.parquet")
    assert len(parts) == raw.num_rows and parts.predicted_minutes.between(1, 60).all()
    np.testing.assert_allclose(parts.predicted_minutes.to_numpy(), model.predict(raw), rtol=0, atol=0)
    kept = parts[parts.in_training_range]
    rmse = float(np.sqrt(np.mean((kept.predicted_minutes - kept.duration_minutes) ** 2)))
    assert rmse == pytest.approx(metrics["val_rmse"], rel=1e-6)


def test_a_boosted_champion_is_scored_on_rows_by_the_registry(tmp_path: Path) -> None:
    """Registered and compared like any model: a boosted champion's RMSE on a new month comes from its rows, even when
    the challenger's month plan was located without ``trip_distance``."""
    from pipeline.core.features import FeatureSpec
    from pipeline.edge.model_files import save_boosted
    from pipeline.edge.registry import Registry
    from pipeline.flows.train import champion_score

    rows = boosted_rows.load([_plan(1)])
    model = boosted.BoostedModel(boosted.train_local(rows.design, rows.minutes, PARAMS, nthread=1), boosted.SPEC, PARAMS)
    registry = Registry.open(tmp_path / "registry", create=True)
    figures = {"model": "xgboost", "train_months": ["2021-01"], "val_month": "2021-02", "val_rmse": 5.8}
    with registry.staging() as staged:
        save_boosted(model, staged)
        (staged / "metrics.json").write_text(json.dumps(figures))
        first, decision = registry.commit(staged, lambda champion: None)
    assert decision.action == "promote" and (first.path / "model.ubj").is_file()
    champion = load_any(registry.champion().path)
    linear_plan = reader.locate(str(REAL), "green", Month(2021, 2), FeatureSpec().columns())  # no trip_distance read
    scored = champion_score.fn(champion, None, (), linear_plan)
    val = boosted_rows.load([_plan(2)])
    assert scored == pytest.approx(boosted.rmse(boosted.predict_booster(model.booster, val.design), val.minutes), rel=1e-12)
