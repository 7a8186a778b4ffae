"""The prediction service: answers equal Model.predict to the bit, bad bodies are 422s naming the field, a new champion is served live.

The ``slow`` tests talk to a real uvicorn process on 127.0.0.1 (started by
``pipeline.service.testing``); the others check the parts in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.core import solve, stats
from pipeline.core.features import N_ZONES, Encoded, FeatureSpec
from pipeline.core.model import EstimatorModel, Model
from pipeline.core.months import Month
from pipeline.core.results import RunResult
from pipeline.edge.metrics import write_metrics
from pipeline.edge.model_files import FORMAT, WEIGHTS_FILE, save_model
from pipeline.edge.registry import Registry
from pipeline.errors import PipelineError
from pipeline.service.app import BYTES_PER_TRIP, create_app
from pipeline.service.payload import TripParser
from pipeline.service.source import ModelSlot, ModelSource
from pipeline.service.testing import running_service

#: Zones 1..39 only, so 40..265 are valid ids the model never saw.
SEEN = 40
#: Small, so "too many trips" is cheap to send.
MAX_BATCH = 1_000
DISTANCE = ("trip_distance",)

_T = TypeVar("_T")


def _result(val_rmse: float, numeric: tuple[str, ...] = ()) -> RunResult:
    return RunResult(
        model="linear",
        taxi="yellow",
        train_months=(Month(2023, 1), Month(2023, 2)),
        val_month=Month(2023, 3),
        alpha=1.0,
        numeric=numeric,
        train_rows=6_000,
        val_rows=3_000,
        train_rmse=val_rmse - 0.1,
        val_rmse=val_rmse,
        seconds=1.0,
        flow_run_id="00000000-0000-0000-0000-000000000000",
    )


def _model(numeric: tuple[str, ...] = (), seed: int = 0, val_rmse: float = 5.0, rows: int = 6_000) -> Model:
    """A model solved from random trips over zones 1..39; 1.5 minutes a unit of each numeric column (so 1.7e308 overflows)."""
    rng = np.random.default_rng(seed)
    pu, do = rng.integers(1, SEEN, rows), rng.integers(1, SEEN, rows)
    x = rng.uniform(0.0, 10.0, (rows, len(numeric)))
    minutes = 5 + 0.2 * pu - 0.1 * do + ((pu * 7 + do) % 5) + seed + x.sum(axis=1) * 1.5 + rng.normal(size=rows)
    encoded = Encoded(pair=pu * N_ZONES + do, micros=np.round(minutes * 60e6).astype(np.int64), x=x, position=np.arange(rows))
    weights = solve.solve(stats.compute(encoded), 1.0)
    return Model(weights, FeatureSpec(numeric=numeric), {"metrics": _result(val_rmse, numeric).to_dict(), "source": "test"})


def _trips(n: int, seed: int, numeric: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Trips over every zone id, seen and unseen, with nulls, ids outside 1..265, integer and null numbers, and a column to ignore."""
    rng = np.random.default_rng(seed)
    odd: list[int | None] = [None, 0, 266, -7, 2**40]
    trips = []
    for i in range(n):
        trip: dict[str, Any] = {
            "PULocationID": odd[i % 5] if i % 11 == 0 else int(rng.integers(1, N_ZONES)),
            "DOLocationID": odd[i % 7 % 5] if i % 13 == 0 else int(rng.integers(1, SEEN)),
            "store_and_fwd_flag": "N",
        }
        for name in numeric:
            trip[name] = None if i % 17 == 0 else (int(i % 9) if i % 5 == 0 else float(rng.uniform(0, 30)))
        trips.append(trip)
    return trips


def _expected(model: Model | EstimatorModel, trips: list[dict[str, Any]]) -> np.ndarray:
    """What ``Model.predict`` says for the same trips, as an Arrow table (nulls and all)."""
    columns = {"PULocationID": pa.int64(), "DOLocationID": pa.int64(), **dict.fromkeys(model.spec.numeric, pa.float64())}
    return model.predict(pa.table({name: pa.array([t[name] for t in trips], kind) for name, kind in columns.items()}))


def _until(check: Callable[[], _T | None], timeout: float = 15.0) -> _T:
    """Poll ``check`` until it gives something; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"nothing changed within {timeout} s")
        time.sleep(0.1)


def _stage(registry: Registry, model: Model, val_rmse: float) -> Path:
    with registry.staging() as staged:
        save_model(model, staged)
        write_metrics(staged, _result(val_rmse, model.spec.numeric))
    return staged


def _commit(registry: Registry, model: Model, val_rmse: float) -> str:
    """Commit ``model``; the champion is scored with its own RMSE, so a lower ``val_rmse`` is promoted."""
    version, _ = registry.commit(_stage(registry, model, val_rmse), lambda champion: champion.val_rmse)
    return version.name


# --- in this process -----------------------------------------------------------------------------------


def test_the_service_loads_no_prefect_and_no_dask() -> None:
    """It starts in the time a model file takes to read; the layer contract checks the imports, this what they drag in."""
    code = "import sys, pipeline.service.app; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout.split())
    assert "fastapi" in loaded and loaded.isdisjoint({"prefect", "prefect_dask", "dask", "distributed", "dask_ml"})


def test_zone_ids_become_the_models_codes_and_null_numbers_zero() -> None:
    parser = TripParser(FeatureSpec(numeric=DISTANCE), max_batch=10)
    ids = [None, 0, 1, 265, 266, -3, 10**30]
    body = json.dumps([{"PULocationID": v, "DOLocationID": v, "trip_distance": d} for v, d in zip(ids, [None, 1, 2.5, 3, 4, 5, 6])])
    pu, do, x, _, _ = parser.parse(body.encode())
    assert pu.tolist() == do.tolist() == [-1, -1, 1, 265, -1, -1, -1]
    assert pu.dtype == np.int64 and x.dtype == np.float64
    assert x.tolist() == [[0.0], [1.0], [2.5], [3.0], [4.0], [5.0], [6.0]]
    assert TripParser(FeatureSpec(), 10).parse(b'[{"PULocationID": 1, "DOLocationID": 2}]')[2].shape == (1, 0)


def test_the_parser_takes_only_strict_types() -> None:
    parser = TripParser(FeatureSpec(numeric=DISTANCE), max_batch=10)
    for bad in ('"1"', "true", "1.0"):
        with pytest.raises(ValidationError):
            parser.parse(f'[{{"PULocationID": {bad}, "DOLocationID": 1, "trip_distance": 1}}]'.encode())
    for bad in ('"1"', "true", "NaN", "1e999"):
        with pytest.raises(ValidationError):
            parser.parse(f'[{{"PULocationID": 1, "DOLocationID": 1, "trip_distance": {bad}}}]'.encode())


def test_sources_that_cannot_be_served_fail_at_start(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("not a registry")
    with pytest.raises(PipelineError, match="empty: not a"):
        create_app(ModelSource.folder(tmp_path / "empty"))
    with pytest.raises(PipelineError, match="not a model registry"):
        create_app(ModelSource.registry(tmp_path / "stuff"))
    with pytest.raises(PipelineError, match="no model registry"):
        create_app(ModelSource.registry(tmp_path / "missing"))
    save_model(_model(), tmp_path / "model")
    with pytest.raises(PipelineError, match="max_batch 0"):
        create_app(ModelSource.folder(tmp_path / "model"), max_batch=0)
    with pytest.raises(PipelineError, match="poll_seconds 0"):
        create_app(ModelSource.folder(tmp_path / "model"), poll_seconds=0)


def test_the_slot_follows_the_champion_and_a_request_keeps_its_model(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "registry", create=True)
    slot = ModelSlot(ModelSource.registry(registry.root), MAX_BATCH)
    assert slot.current is None and "no champion yet" in (slot.problem or "")
    assert slot.refresh() is False

    first, second = _model(seed=1), _model(DISTANCE, seed=2)
    assert _commit(registry, first, 5.0) == "v0001"  # the first version is promoted
    assert slot.refresh() is True
    held = slot.current  # what a request in flight holds
    assert held is not None and held.version == "v0001" and held.parser.numeric == ()
    assert _commit(registry, second, 9.0) == "v0002"  # worse: kept, champion.json untouched
    assert slot.refresh() is False and slot.current is held

    registry.promote("v0002")
    assert slot.refresh() is True
    assert slot.current is not None and slot.current.version == "v0002" and slot.current.parser.numeric == DISTANCE
    assert slot.refresh() is False
    pu, do = np.array([1, 5, -1]), np.array([2, 7, 3])
    x = np.empty((3, 0))
    assert held.version == "v0001" and held.model.predict_codes(pu, do, x).tobytes() == first.predict_codes(pu, do, x).tobytes()

    # A champion whose files are broken is logged; the model before it stays.
    third = _commit(registry, _model(seed=3), 1.0)  # better: promoted
    (registry.root / "versions" / third / WEIGHTS_FILE).unlink()  # (promote refuses a damaged version; a commit's race does not)
    assert slot.refresh() is False
    assert slot.current.version == "v0002" and third in (slot.problem or "") and "champion not loaded" in (slot.problem or "")
    registry.promote("v0002")  # back to the model being served: nothing to load, nothing wrong any more
    assert slot.refresh() is False and slot.current.version == "v0002" and slot.problem is None


# --- a real uvicorn process ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, Path]:
    folder = tmp_path_factory.mktemp("model")
    model = _model(DISTANCE, val_rmse=4.25)
    save_model(model, folder)
    return model, folder


@pytest.fixture(scope="module")
def client(served_model: tuple[Model, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The service on the folder's model, max_batch 1,000, and a keep-alive client of it."""
    log = tmp_path_factory.mktemp("service") / "service.log"
    with (
        running_service(ModelSource.folder(served_model[1]), log, max_batch=MAX_BATCH) as url,
        httpx.Client(base_url=url, trust_env=False, timeout=30) as http,
    ):
        yield http


def _post(client: httpx.Client, body: bytes | Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/predict", content=content, headers={"content-type": "application/json"})


@pytest.mark.slow
def test_predict_is_model_predict_to_the_bit_in_order(client: httpx.Client, served_model: tuple[Model, Path]) -> None:
    model, _ = served_model
    trips = _trips(MAX_BATCH, seed=5, numeric=DISTANCE)
    answer = _post(client, trips)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["model"] == {"version": None, "format": FORMAT}
    got = np.array(document["minutes"], dtype=np.float64)
    expected = _expected(model, trips)
    assert got.tobytes() == expected.tobytes()
    assert len(set(got.tolist())) > 100  # the trips are not all alike
    # The same trips backwards come back backwards; one trip alone is the same figure.
    assert _post(client, trips[::-1]).json()["minutes"] == document["minutes"][::-1]
    assert _post(client, trips[3:4]).json()["minutes"] == [document["minutes"][3]]


@pytest.mark.slow
def test_ids_of_any_size_are_unknown_zones(client: httpx.Client) -> None:
    unknown = _post(client, [{"PULocationID": None, "DOLocationID": 5, "trip_distance": 2.0}]).json()["minutes"]
    for huge in (10**30, -(10**30), 2**63):
        answer = _post(client, [{"PULocationID": huge, "DOLocationID": 5, "trip_distance": 2.0}])
        assert answer.status_code == 200 and answer.json()["minutes"] == unknown


def _trip(**changes: Any) -> dict[str, Any]:
    trip: dict[str, Any] = {"PULocationID": 3, "DOLocationID": 4, "trip_distance": 1.5}
    trip.update(changes)
    return {k: v for k, v in trip.items() if v is not ...}


def _raw_distance(literal: str) -> bytes:
    """A one-trip body whose trip_distance is ``literal`` as written (not JSON by the standard: 1e999, NaN)."""
    return f'[{{"PULocationID": 3, "DOLocationID": 4, "trip_distance": {literal}}}]'.encode()


GOOD = _trip()

BAD_BODIES: list[tuple[str, Any, list[str | int], str]] = [
    ("missing pickup", [GOOD, _trip(PULocationID=...)], ["body", 1, "PULocationID"], "missing"),
    ("missing dropoff", [_trip(DOLocationID=...)], ["body", 0, "DOLocationID"], "missing"),
    ("zone as a string", [GOOD, GOOD, _trip(DOLocationID="236")], ["body", 2, "DOLocationID"], "int_type"),
    ("zone as a bool", [_trip(PULocationID=True)], ["body", 0, "PULocationID"], "int_type"),
    ("zone as a float", [_trip(PULocationID=132.0)], ["body", 0, "PULocationID"], "int_type"),
    ("zone as an object", [_trip(PULocationID={"id": 1})], ["body", 0, "PULocationID"], "int_type"),
    ("numeric column missing", [GOOD, _trip(trip_distance=...)], ["body", 1, "trip_distance"], "missing"),
    ("numeric as a string", [_trip(trip_distance="1.5")], ["body", 0, "trip_distance"], "float_type"),
    ("numeric as a bool", [_trip(trip_distance=False)], ["body", 0, "trip_distance"], "float_type"),
    ("numeric beyond a double", _raw_distance("1e999"), ["body", 0, "trip_distance"], "finite_number"),
    ("integer beyond a double", [_trip(trip_distance=10**400)], ["body", 0, "trip_distance"], "finite_number"),
    ("NaN", _raw_distance("NaN"), ["body", 0, "trip_distance"], "finite_number"),
    ("a prediction beyond a double", [GOOD, _trip(trip_distance=1.7e308)], ["body", 1], "prediction_not_finite"),
    ("a trip that is not an object", [GOOD, 7], ["body", 1], "dict_type"),
    ("an empty list", [], ["body"], "too_short"),
    ("more than max_batch", [GOOD] * (MAX_BATCH + 1), ["body"], "too_long"),
    ("an object instead of a list", {"trips": [GOOD]}, ["body"], "list_type"),
    ("a number", 5, ["body"], "list_type"),
    ("null", None, ["body"], "list_type"),
    ("invalid JSON", b'[{"PULocationID": 3,', ["body"], "json_invalid"),
    ("no body", b"", ["body"], "json_invalid"),
    ("not UTF-8", b"\xff\xfe[]", ["body"], "json_invalid"),
    ("nested too deep", b"[" * 100_000 + b"]" * 100_000, ["body"], "json_invalid"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("body", "loc", "kind"), [case[1:] for case in BAD_BODIES], ids=[case[0] for case in BAD_BODIES])
def test_bad_bodies_are_422s_naming_index_and_field(client: httpx.Client, body: Any, loc: list[str | int], kind: str) -> None:
    answer = _post(client, body)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail[0]["loc"] == loc and detail[0]["type"] == kind, detail
    assert all(set(problem) >= {"loc", "msg", "type"} for problem in detail)


@pytest.mark.slow
def test_a_batch_of_bad_trips_lists_the_first_problems_only(client: httpx.Client) -> None:
    trip = {"PULocationID": "x", "DOLocationID": "y"}
    answer = _post(client, [trip] * MAX_BATCH)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert len(detail) == 20 and detail[:3] == [
        {"type": "int_type", "loc": ["body", 0, "PULocationID"], "msg": "Input should be a valid integer", "input": "x"},
        {"type": "int_type", "loc": ["body", 0, "DOLocationID"], "msg": "Input should be a valid integer", "input": "y"},
        {"type": "missing", "loc": ["body", 0, "trip_distance"], "msg": "Field required", "input": trip},
    ]


@pytest.mark.slow
def test_bodies_too_big_are_refused_unread(client: httpx.Client) -> None:
    limit = MAX_BATCH * BYTES_PER_TRIP + 4096
    declared = _post(client, b" " * (limit + 1))
    assert declared.status_code == 413 and "at most" in declared.json()["detail"]
    chunked = client.post("/predict", content=iter([b"[" + b" " * 65_536] * (limit // 65_536 + 2)))  # no content-length
    assert chunked.status_code == 413
    assert client.get("/health").status_code == 200  # and the service is still up


@pytest.mark.slow
def test_model_health_and_openapi(client: httpx.Client) -> None:
    assert client.get("/model").json() == {
        "version": None,
        "format": FORMAT,
        "train_months": ["2023-01", "2023-02"],
        "val_month": "2023-03",
        "val_rmse": 4.25,
        "numeric": ["trip_distance"],
        "terms": ["PULocationID", "DOLocationID", "PU_DO", "trip_distance"],
        "fields": ["PULocationID", "DOLocationID", "trip_distance"],
    }
    health = client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["type"] == "array" and body["minItems"] == 1 and body["maxItems"] == MAX_BATCH
    assert body["items"]["required"] == ["PULocationID", "DOLocationID"]
    assert {"/predict", "/model", "/health"} <= set(schema["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.mark.slow
def test_a_registry_champion_is_served_live_without_a_restart(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "registry", create=True)
    first, second = _model(seed=1, val_rmse=5.0), _model(DISTANCE, seed=2, val_rmse=9.0)
    trips = _trips(200, seed=9, numeric=DISTANCE)
    with (
        running_service(ModelSource.registry(registry.root), tmp_path / "service.log") as url,
        httpx.Client(base_url=url, trust_env=False, timeout=30) as client,
    ):

        def serving(version: str) -> str | None:
            answer = client.get("/model")
            return version if answer.status_code == 200 and answer.json()["version"] == version else None

        # An empty registry: up, but no model.
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable" and "no champion" in health.json()["detail"]
        assert _post(client, trips).status_code == 503 and client.get("/model").status_code == 503

        assert _commit(registry, first, 5.0) == "v0001"  # the first version becomes champion
        _until(lambda: serving("v0001"))
        answer = _post(client, trips).json()
        assert answer["model"] == {"version": "v0001", "format": FORMAT}
        assert np.array(answer["minutes"]).tobytes() == _expected(first, trips).tobytes()

        assert _commit(registry, second, 9.0) == "v0002"  # worse: kept
        time.sleep(2.5)  # more than two looks at champion.json
        assert serving("v0001")

        started = time.monotonic()
        registry.promote("v0002")
        _until(lambda: serving("v0002"))
        switched = time.monotonic() - started
        answer = _post(client, trips).json()
        assert answer["model"]["version"] == "v0002"
        assert np.array(answer["minutes"]).tobytes() == _expected(second, trips).tobytes()
        info = client.get("/model").json()
        assert info["numeric"] == ["trip_distance"] and info["val_rmse"] == 9.0
        # The new champion needs trip_distance; the old one did not.
        missing = _post(client, [{"PULocationID": 1, "DOLocationID": 2}])
        assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", 0, "trip_distance"]

        registry.rollback()
        _until(lambda: serving("v0001"))
        assert _post(client, [{"PULocationID": 1, "DOLocationID": 2}]).status_code == 200
    log = (tmp_path / "service.log").read_text()
    assert "serving nothing yet from registry" in log and "serving v0002 from" in log and "Traceback" not in log
    print(f"champion switch seen after {switched:.2f} s")


@pytest.mark.slow
def test_an_estimator_model_is_served_like_a_linear_one(tmp_path: Path) -> None:
    """A HistGradientBoosting pipeline from a skops file: the same body, its own format tag, Model.predict's figures."""
    from threadpoolctl import threadpool_limits

    from pipeline.core import estimators
    from pipeline.edge import chunks, reader
    from pipeline.edge.model_files import SKOPS_FORMAT, save_estimator
    from pipeline.edge.synth import write_months

    spec = FeatureSpec(numeric=DISTANCE)
    write_months(tmp_path / "months", [Month(2023, 1)], 3_000, seed=0)
    plan = reader.locate(str(tmp_path / "months"), "yellow", Month(2023, 1), spec.columns())
    with threadpool_limits(limits=1):  # OpenMP threads spin-waiting on a shared machine slow HistGradientBoosting tenfold
        model = EstimatorModel(estimators.fit("hist_gradient_boosting", chunks.load_rows([plan], spec, 1, 0, None), 0), spec, {})
        save_estimator(model, tmp_path / "model")
        expected = _expected(model, trips := _trips(300, seed=3, numeric=DISTANCE))
    with (
        running_service(ModelSource.folder(tmp_path / "model"), tmp_path / "service.log") as url,
        httpx.Client(base_url=url, trust_env=False, timeout=30) as client,
    ):
        answer = _post(client, trips).json()
        assert client.get("/model").json()["format"] == SKOPS_FORMAT
    assert answer["model"] == {"version": None, "format": SKOPS_FORMAT}
    assert np.array(answer["minutes"]).tobytes() == expected.tobytes()
