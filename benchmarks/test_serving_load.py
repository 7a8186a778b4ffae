"""``serve --registry`` under load while the champion is promoted twice, with one uvicorn process and with two.

32 concurrent clients on keep-alive connections for 30 s send single trips and
1,000-trip batches (nine to one) while a new champion is promoted at 10 s and 20 s.
Each version's model predicts one constant, so every answer is checked whole: all
its predictions from the one version it names. Reported: p50/p99 latency over all
answers, requests/s, the versions seen; then the server's resident memory over
100,000 requests (``--workers 1``). ``--bench-quick`` runs a tenth: 3 s, 10,000.

The clients run in this process (threads): on 2 cores they take CPU from the
server, so the figures are those of a client and a server sharing the machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.conftest import _flag
from pipeline.edge.processes import tree_rss_mb
from pipeline.edge.registry import Registry
from pipeline.service.source import ModelSource
from pipeline.service.testing import LoadReport, commit_constant_version, drive_load, running_service

MINUTES = {"v0001": 10.0, "v0002": 20.0, "v0003": 30.0}
TRIP = {"PULocationID": 132, "DOLocationID": 236, "trip_distance": 3.5}
BATCH = 1_000
CLIENTS = 32
SECONDS = 30.0
MEMORY_REQUESTS = 100_000
#: At most this growth of the server's resident memory from the first tenth of the requests to the end, MB.
MEMORY_GROWTH_MB = 20.0


def _bodies() -> list[tuple[str, int, bytes]]:
    single = ("single", 1, json.dumps([TRIP]).encode())
    batch = ("batch", BATCH, json.dumps([{**TRIP, "PULocationID": 1 + n % 263} for n in range(BATCH)]).encode())
    return [single] * 9 + [batch]


def _whole(trips: int, answer: dict) -> str | None:
    version = answer.get("model", {}).get("version")
    minutes = answer.get("minutes", [])
    expected = MINUTES.get(version)
    if expected is None or len(minutes) != trips or any(m != expected for m in minutes):
        return f"{trips} trips answered {sorted(set(minutes))[:3]} naming {version}"
    return None


@pytest.fixture(scope="module")
def quick(pytestconfig: pytest.Config) -> bool:
    return _flag(pytestconfig, "bench_quick", "BENCH_QUICK")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    store = Registry.open(tmp_path_factory.mktemp("load") / "registry", create=True)
    for name, rmse in zip(MINUTES, (5.0, 6.0, 7.0), strict=True):  # worse each time: v0001 stays champion
        assert commit_constant_version(store, MINUTES[name], rmse) == name
    yield store


def _figures(report: LoadReport) -> dict[str, object]:
    return {
        "requests": report.requests,
        "seconds": round(report.seconds, 2),
        "requests_per_s": round(report.per_second, 1),
        "trips_per_s": round((report.kinds["single"] + BATCH * report.kinds["batch"]) / report.seconds),
        "p50_ms": round(report.percentile(50), 2),
        "p99_ms": round(report.percentile(99), 2),
        "singles": report.kinds["single"],
        "batches": report.kinds["batch"],
        "versions": {str(k): v for k, v in sorted(report.versions.items(), key=str)},
    }


def _assert_whole(report: LoadReport) -> None:
    assert report.errors == [] and report.wrong == [], (report.errors[:3], report.wrong[:3])
    assert set(report.statuses) == {200}, report.statuses


@pytest.mark.parametrize("workers", [1, 2])
def test_load_through_two_promotions(benchmark, quick: bool, registry: Registry, tmp_path: Path, workers: int) -> None:
    registry.promote("v0001")
    seconds = SECONDS / 10 if quick else SECONDS
    pid: list[int] = []
    source = ModelSource.registry(registry.root)
    log = tmp_path / "service.log"
    with running_service(source, log, poll_seconds=0.2, access_log=False, workers=workers, pid=pid) as url:
        events = [(seconds / 3, lambda: registry.promote("v0002")), (2 * seconds / 3, lambda: registry.promote("v0003"))]

        def run() -> LoadReport:
            return drive_load(url, _bodies(), _whole, clients=CLIENTS, seconds=seconds, max_requests=10**7, events=events)

        report = benchmark.pedantic(run, rounds=1, iterations=1)
    _assert_whole(report)
    assert set(report.versions) == set(MINUTES)  # every promotion picked up under load
    figures = _figures(report)
    benchmark.extra_info.update(workers=workers, clients=CLIENTS, **figures)
    benchmark.extra_info["headline"] = (
        f"serve --workers {workers}, {CLIENTS} clients, 2 promotions: {figures['requests_per_s']} req/s, "
        f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, {figures['requests']} answers all whole"
    )
    assert "Traceback" not in log.read_text()


def test_memory_stays_flat_over_100k_requests(benchmark, quick: bool, registry: Registry, tmp_path: Path) -> None:
    registry.promote("v0001")
    requests = MEMORY_REQUESTS // 10 if quick else MEMORY_REQUESTS
    pid: list[int] = []
    with running_service(ModelSource.registry(registry.root), tmp_path / "service.log", access_log=False, pid=pid) as url:

        def run() -> LoadReport:
            rss = lambda: tree_rss_mb(pid[0])  # noqa: E731
            return drive_load(url, _bodies(), _whole, clients=CLIENTS, seconds=600, max_requests=requests, memory=rss)

        report = benchmark.pedantic(run, rounds=1, iterations=1)
    _assert_whole(report)
    assert report.requests == requests
    settled = next(mb for done, mb in report.memory if done >= requests // 10)  # after the first tenth: warm
    end = report.memory[-1][1]
    figures = _figures(report)
    benchmark.extra_info.update(
        rss_start_mb=round(report.memory[0][1], 1), rss_settled_mb=round(settled, 1), rss_end_mb=round(end, 1), **figures
    )
    benchmark.extra_info["headline"] = (
        f"serve memory over {requests:,} requests: {settled:.1f} MB after the first tenth, {end:.1f} MB at the end "
        f"({figures['requests_per_s']} req/s)"
    )
    assert end - settled < MEMORY_GROWTH_MB, report.memory
