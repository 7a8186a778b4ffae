"""The prediction service over HTTP: one trip and a 10,000-trip batch through a real uvicorn process.

The model is trained on the first generated month with ``trip_distance`` (the
retraining default's winner); requests carry rows of the second. Bodies are
encoded before the clock starts and answers are not decoded inside it, so a
figure is what the service and the loopback cost, not the client's JSON. The
client is one keep-alive ``httpx`` connection sending one request at a time.

These are the suite's only absolute times. The issue's targets (a median single
trip under 5 ms, a median 10k batch under 50 ms) are printed beside the figures;
what is asserted is twice the target (four times with ``--bench-quick``, CI's
shared runners), so noise on a shared machine does not fail it (a 10k batch
measured a 63 ms median under load). ``in_process_batch_ms`` is the same
batch through the handler's own work (validate, predict, encode) with no HTTP:
the rest of ``batch_ms`` is uvicorn, h11 and the socket.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from benchmarks.common import ALPHA, CHUNK_ROWS, TAXI, months
from benchmarks.conftest import QUICK_FLOORS, Bench
from pipeline.core import solve, stats
from pipeline.core.features import FeatureSpec
from pipeline.core.model import Model, input_columns
from pipeline.core.schema import PICKUP
from pipeline.edge import reader
from pipeline.edge.chunks import chunk_statistics
from pipeline.edge.model_files import save_model
from pipeline.service.app import prediction_json
from pipeline.service.payload import pickup_field
from pipeline.service.source import ModelSlot, ModelSource
from pipeline.service.testing import running_service

#: The issue's targets, milliseconds (medians).
SINGLE_MS = 5.0
BATCH_MS = 50.0
#: Asserted: at most this factor times the target (the machine is shared), and this one more in quick mode (CI).
FACTOR, QUICK_FACTOR = 2.0, 2.0
SINGLE_REQUESTS = 300
BATCH_TRIPS = 10_000
BATCH_REQUESTS = 20
#: The linear models served: the seed's zones with raw ``trip_distance``, and the richest default spec (bins and the
#: pickup's hour of the week, so each trip also carries its pickup time).
SPECS = {
    "trip_distance": FeatureSpec(numeric=("trip_distance",)),
    "binned": FeatureSpec.of("PULocationID,DOLocationID,PU_DO,trip_distance:log48,hour_of_week"),
}


@dataclass(frozen=True)
class Service:
    url: str
    model: Model
    folder: Path
    trips: pa.Table  # rows of the validation month, canonical columns (what the model predicts from)
    payload: list[dict]  # the same rows as clients send them

    def bodies(self, count: int) -> list[bytes]:
        return [json.dumps([trip]).encode() for trip in self.payload[:count]]


def _payload(trips: pa.Table) -> list[dict]:
    """Rows as the service takes them: the pickup time under its month-file name, as ISO 8601 text."""
    if PICKUP not in trips.column_names:
        return trips.to_pylist()
    stamps = pc.strftime(trips.column(PICKUP), format="%Y-%m-%dT%H:%M:%S")
    return trips.drop_columns([PICKUP]).append_column(pickup_field(TAXI), stamps).to_pylist()


@pytest.fixture(scope="module", params=sorted(SPECS))
def service(request, bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    spec = SPECS[request.param]
    train, val = months(2)
    plan = reader.locate(str(bench.folder), TAXI, train, spec.columns())
    pooled = stats.combine([chunk_statistics(plan, chunk, spec) for chunk in reader.plan(plan.layout, CHUNK_ROWS)])
    model = Model(solve.solve(pooled, ALPHA, spec.zones), spec, {"metrics": {"train_months": [str(train)], "val_month": str(val)}})
    folder = tmp_path_factory.mktemp("served-model")
    save_model(model, folder)

    layout = reader.locate(str(bench.folder), TAXI, val, spec.columns()).layout
    table = reader.read(layout, reader.plan(layout, BATCH_TRIPS)[0]).select(list(input_columns(spec))).slice(0, BATCH_TRIPS)
    assert table.num_rows == BATCH_TRIPS
    with running_service(ModelSource.folder(folder), folder / "service.log") as url:
        yield Service(url, model, folder, table, _payload(table))


def _limit(bench: Bench, target: float) -> float:
    return target * FACTOR * (QUICK_FACTOR if bench.floors == QUICK_FLOORS else 1.0)


def _headline(what: str, figures: dict[str, float], target: float, limit: float) -> str:
    return f"{what}: median {figures['median_ms']:.1f} ms (goal {target:g} ms, asserted under {limit:g})"


def _timed(send: Callable[[], httpx.Response], rounds: int, warmup: int, benchmark) -> list[float]:
    """Milliseconds of ``rounds`` calls after ``warmup`` untimed ones, each answered 200; through pytest-benchmark too."""
    times: list[float] = []

    def one() -> None:
        start = time.perf_counter()
        answer = send()
        times.append((time.perf_counter() - start) * 1e3)
        assert answer.status_code == 200, answer.text[:500]

    for _ in range(warmup):
        one()
    times.clear()
    # A full collection in this process (pytest's heap, every module the session imported) took ~50 ms and landed
    # in one request's time: the client's pause, not the service's. Frozen objects are not scanned until unfrozen.
    gc.collect()
    gc.freeze()
    try:
        benchmark.pedantic(one, rounds=rounds, iterations=1)
    finally:
        gc.unfreeze()
    return times


def _figures(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
        "min_ms": round(ordered[0], 3),
        "max_ms": round(ordered[-1], 3),
    }


def test_single_trip_latency(benchmark, bench: Bench, service: Service) -> None:
    bodies = service.bodies(SINGLE_REQUESTS)
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=service.url, trust_env=False) as client:
        answer = client.post("/predict", content=bodies[0], headers=headers).json()
        assert answer["minutes"] == service.model.predict(service.trips.slice(0, 1)).tolist()
        sent = iter(bodies * 2)
        times = _timed(lambda: client.post("/predict", content=next(sent), headers=headers), SINGLE_REQUESTS, 30, benchmark)
    figures = _figures(times)
    limit = _limit(bench, SINGLE_MS)
    benchmark.extra_info.update(
        requests=SINGLE_REQUESTS,
        target_ms=SINGLE_MS,
        limit_ms=limit,
        headline=_headline("one trip over HTTP", figures, SINGLE_MS, limit),
        **figures,
    )
    assert figures["median_ms"] < limit, figures


def test_batch_latency(benchmark, bench: Bench, service: Service) -> None:
    body = json.dumps(service.payload).encode()
    headers = {"content-type": "application/json"}
    expected = service.model.predict(service.trips)
    with httpx.Client(base_url=service.url, trust_env=False, timeout=30) as client:
        answer = client.post("/predict", content=body, headers=headers).json()
        assert np.array(answer["minutes"]).tobytes() == expected.tobytes()
        times = _timed(lambda: client.post("/predict", content=body, headers=headers), BATCH_REQUESTS, 2, benchmark)
    figures = _figures(times)
    served = ModelSlot(ModelSource.folder(service.folder), BATCH_TRIPS).current
    assert served is not None
    in_process = []
    for _ in range(BATCH_REQUESTS):
        start = time.perf_counter()
        prediction_json(served, body)
        in_process.append((time.perf_counter() - start) * 1e3)
    limit = _limit(bench, BATCH_MS)
    benchmark.extra_info.update(
        trips=BATCH_TRIPS,
        requests=BATCH_REQUESTS,
        body_bytes=len(body),
        target_ms=BATCH_MS,
        limit_ms=limit,
        in_process_batch_ms=round(statistics.median(in_process), 3),
        trips_per_second=round(BATCH_TRIPS / figures["median_ms"] * 1e3),
        headline=_headline(f"a {BATCH_TRIPS:,}-trip batch over HTTP", figures, BATCH_MS, limit),
        **figures,
    )
    assert figures["median_ms"] < limit, figures
