"""``serve --registry`` under concurrent load while the champion is promoted: every answer 200, whole from one version.

Each version's model predicts one constant (v0001 10 min, v0002 20 min), so an answer
shows which model made each of its predictions: a batch answered partly by one version
and partly by another, or naming one version and holding another's numbers, is caught.
The full 32-client, 30-second run with two promotions is benchmarks/test_serving_load.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.edge.processes import tree_rss_mb
from pipeline.edge.registry import Registry
from pipeline.service.source import ModelSource
from pipeline.service.testing import commit_constant_version, drive_load, running_service

MINUTES = {"v0001": 10.0, "v0002": 20.0}
TRIP = {"PULocationID": 132, "DOLocationID": 236, "trip_distance": 3.5}
BATCH = 1_000


def bodies() -> list[tuple[str, int, bytes]]:
    """Nine single trips to one 1,000-trip batch."""
    single = ("single", 1, json.dumps([TRIP]).encode())
    batch = ("batch", BATCH, json.dumps([{**TRIP, "PULocationID": 1 + n % 263} for n in range(BATCH)]).encode())
    return [single] * 9 + [batch]


def whole_from_its_version(trips: int, answer: dict) -> str | None:
    version = answer.get("model", {}).get("version")
    minutes = answer.get("minutes", [])
    expected = MINUTES.get(version)
    if expected is None or len(minutes) != trips or any(m != expected for m in minutes):
        return f"{trips} trips answered {sorted(set(minutes))[:3]} naming {version}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_answers_stay_whole_through_a_promotion_under_load(tmp_path: Path, workers: int) -> None:
    registry = Registry.open(tmp_path / "registry", create=True)
    assert commit_constant_version(registry, MINUTES["v0001"], 5.0) == "v0001"
    assert commit_constant_version(registry, MINUTES["v0002"], 6.0) == "v0002"  # worse: kept, promoted during the load
    pid: list[int] = []
    log = tmp_path / "service.log"
    with running_service(ModelSource.registry(registry.root), log, poll_seconds=0.2, access_log=False, workers=workers, pid=pid) as url:
        report = drive_load(
            url,
            bodies(),
            whole_from_its_version,
            clients=8,
            seconds=5.0,
            max_requests=50_000,
            events=[(2.0, lambda: registry.promote("v0002"))],
            memory=lambda: tree_rss_mb(pid[0]),
        )
    assert report.errors == [] and report.wrong == [], (report.errors[:3], report.wrong[:3])
    assert set(report.statuses) == {200} and report.requests > 100
    assert report.kinds["batch"] > 5 and report.kinds["single"] > 50
    assert set(report.versions) == {"v0001", "v0002"}  # both served: the promotion was picked up under load
    text = log.read_text()
    assert "Traceback" not in text and text.count("serving v0002 from") == workers


def test_the_listener_of_several_workers_gives_connections_tcp_nodelay() -> None:
    """uvicorn's bound listener has proto 0, so asyncio left Nagle on and each keep-alive answer waited ~40 ms."""
    import asyncio
    import socket

    import uvicorn

    from pipeline.service.app import _tcp_listener

    bound = uvicorn.Config("pipeline.service.app:worker_app", host="127.0.0.1", port=0).bind_socket()
    listener = _tcp_listener(bound)
    assert listener.proto == socket.IPPROTO_TCP and listener.get_inheritable()
    seen: list[int] = []

    async def accept_one() -> None:
        def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=listener)
        async with server:
            _, writer = await asyncio.wait_for(asyncio.open_connection(*listener.getsockname()[:2]), 10)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
            writer.close()

    asyncio.run(accept_one())
    assert seen and seen[0] != 0
