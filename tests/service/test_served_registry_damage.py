"""``serve --registry`` meets a damaged registry: it keeps answering with the model it has and logs the damage."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec
from pipeline.core.model import Model
from pipeline.core.months import Month
from pipeline.core.results import RunResult
from pipeline.core.solve import Weights
from pipeline.edge.metrics import write_metrics
from pipeline.edge.model_files import save_model
from pipeline.edge.registry import Registry
from pipeline.service.source import ModelSource
from pipeline.service.testing import running_service

TRIP = [{"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.0}]


def commit(registry: Registry, intercept: float, val_rmse: float, repair: bool = False) -> str:
    """A version whose model predicts ``intercept`` minutes for every trip."""
    with registry.staging() as staged:
        weights = Weights(intercept, np.zeros(N_ZONES), np.zeros(N_ZONES), np.zeros(N_PAIRS), np.zeros(0))
        save_model(Model(weights, FeatureSpec(), {}), staged)
        result = RunResult(
            model="linear",
            taxi="yellow",
            train_months=(Month(2023, 1), Month(2023, 2)),
            val_month=Month(2023, 3),
            alpha=1e-3,
            numeric=(),
            train_rows=1000,
            val_rows=500,
            train_rmse=val_rmse,
            val_rmse=val_rmse,
            seconds=1.0,
            flow_run_id=f"run-{intercept}",
        )
        write_metrics(staged, result)
    version, _ = registry.commit(staged, lambda champion: champion.val_rmse, repair=repair)
    return version.name


def _post(url: str, trips: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{url}/predict", json.dumps(trips).encode(), {"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_for(log: Path, text: str, seconds: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while text not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)


def test_a_damaged_champion_is_logged_and_the_model_served_stays(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "registry", create=True)
    assert commit(registry, 10.0, 5.0) == "v0001"
    log = tmp_path / "service.log"
    with running_service(ModelSource.registry(registry.root), log, poll_seconds=0.2, access_log=False) as url:
        assert _post(url, TRIP) == (200, {"minutes": [10.0], "model": {"version": "v0001", "format": "taxi-pipeline/linear-pairs/v1"}})

        (registry.root / "champion.json").write_bytes(b'{"version": "v00')  # truncated
        _wait_for(log, "champion.json: unreadable")
        assert _post(url, TRIP)[1]["model"]["version"] == "v0001"

        (registry.root / "champion.json").write_text('{"version": "v0001"}')  # mended by hand: back to the model served
        v2 = commit(registry, 20.0, 4.0)  # promoted, then its model file lost
        _wait_for(log, "serving v0002")
        (registry.root / "versions" / v2 / "model.npz").unlink()
        (registry.root / "champion.json").write_text('{"version": "v0002", "since": "again"}')  # a new file: looked at again
        _wait_for(log, "v0002/model.npz: missing from version v0002")
        status, answer = _post(url, TRIP)
        assert status == 200 and answer["model"]["version"] == "v0002"  # the v0002 loaded before its file went

    text = log.read_text()
    assert "Traceback" not in text and "still serving v0001" in text and "still serving v0002" in text


def test_a_process_starting_on_a_damaged_champion_json_serves_the_champion_the_history_records(tmp_path: Path) -> None:
    """What a --workers process (re)started after the damage meets: it serves what the others serve."""
    registry = Registry.open(tmp_path / "registry", create=True)
    commit(registry, 10.0, 5.0)
    (registry.root / "champion.json").write_bytes(b"\x00garbage")
    log = tmp_path / "service.log"
    with running_service(ModelSource.registry(registry.root), log, poll_seconds=0.2, access_log=False) as url:
        assert _post(url, TRIP)[1]["model"]["version"] == "v0001"
    text = log.read_text()
    assert "champion.json: unreadable" in text and "serving v0001, the champion history.jsonl records" in text


def test_a_registry_whose_recorded_champion_is_damaged_too_is_served_as_503_naming_the_damage(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "registry", create=True)
    commit(registry, 10.0, 5.0)
    (registry.root / "versions" / "v0001" / "model.npz").unlink()
    log = tmp_path / "service.log"
    with running_service(ModelSource.registry(registry.root), log, poll_seconds=0.2, access_log=False) as url:
        status, answer = _post(url, TRIP)
        assert status == 503 and "v0001/model.npz: missing" in answer["detail"]
        assert commit(registry, 30.0, 4.0, repair=True) == "v0002"  # a new whole champion is picked up
        _wait_for(log, "serving v0002")
        assert _post(url, TRIP) == (200, {"minutes": [30.0], "model": {"version": "v0002", "format": "taxi-pipeline/linear-pairs/v1"}})
    assert "Traceback" not in log.read_text()
