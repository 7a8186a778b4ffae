"""Test support shipped with the package: the service in a real uvicorn process on 127.0.0.1, and load on it.

``tests/`` and ``benchmarks/`` both start one; it lives here (as
:mod:`pipeline.runtime.testing` does for the Prefect API) so there is one
copy of how it is brought up and taken down, and of the load both put on it
(:func:`drive_load`: concurrent keep-alive clients, bounded in time and count).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.edge.ports import free_port
from pipeline.edge.registry import Registry
from pipeline.service.source import ModelSource

#: What the child runs: ``serve`` itself, as ``taxi-pipeline serve`` will.
_LAUNCH = """
import sys
from pipeline.service.app import ModelSource, serve
kind, location, port, max_batch, poll_seconds, access_log, workers = sys.argv[1:]
serve(
    ModelSource(kind, location), port=int(port), max_batch=int(max_batch), poll_seconds=float(poll_seconds),
    access_log=access_log == "1", workers=int(workers),
)
"""


@contextmanager
def running_service(
    source: ModelSource,
    log: Path,
    max_batch: int = 10_000,
    poll_seconds: float = 1.0,
    access_log: bool = True,
    timeout: float = 60.0,
    workers: int = 1,
    pid: list[int] | None = None,
) -> Iterator[str]:
    """``serve(source)`` in a child process on 127.0.0.1 and a free port; yields its base URL once it answers.

    Its output goes to ``log``; it is stopped with SIGTERM (uvicorn's graceful
    shutdown), then killed if it lingers. ``pid``, if given, receives the child's pid
    (the parent of ``workers`` processes if more than one).
    """
    port = free_port()
    args = [source.kind, source.location, str(port), str(max_batch), str(poll_seconds), "1" if access_log else "0", str(workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", _LAUNCH, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    if pid is not None:
        pid.append(process.pid)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(f"{url}/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start ({source}): {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(url: str) -> bool:
    """Whether anything answers HTTP at ``url`` (a 503 of an empty registry counts)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy
    try:
        with direct.open(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


# --- load: concurrent clients, each on its own keep-alive connection ------------------------------------------------


@dataclass
class LoadReport:
    """What :func:`drive_load` saw: every answer's time and status, the versions named, the answers that were wrong."""

    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)  # "single", "batch"
    statuses: Counter[int] = field(default_factory=Counter)
    versions: Counter[str | None] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # answers not whole from the one version they name (first few kept)
    errors: list[str] = field(default_factory=list)  # connection failures (first few kept)
    memory: list[tuple[int, float]] = field(default_factory=list)  # (requests answered, server RSS in MB), sampled

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


#: Decides whether an answer is right: (trips sent, answer document) -> None, or what is wrong with it.
Check = Callable[[int, dict[str, Any]], "str | None"]


def drive_load(
    url: str,
    bodies: Sequence[tuple[str, int, bytes]],
    check: Check,
    *,
    clients: int,
    seconds: float,
    max_requests: int,
    events: Sequence[tuple[float, Callable[[], object]]] = (),
    memory: Callable[[], float] | None = None,
    sample_every: float = 0.5,
) -> LoadReport:
    """``clients`` threads POST ``/predict`` over keep-alive connections for ``seconds`` or ``max_requests`` answers.

    Request ``i`` sends ``bodies[i % len(bodies)]`` (kind, trips, JSON body), so the mix is the list's. Each answer
    is decoded and given to ``check``. ``events`` run in this thread at their offsets from the start (promotions),
    and ``memory()`` (the server's RSS, MB) is sampled every ``sample_every`` seconds. Bounded: every client stops
    at the deadline or the count, and is joined with a timeout.
    """
    target = urlsplit(url)
    report = LoadReport(seconds=0.0)
    lock = threading.Lock()
    numbers = itertools.count()
    start = time.monotonic()
    deadline = start + seconds

    def client() -> None:
        connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
        headers = {"Content-Type": "application/json"}
        try:
            while time.monotonic() < deadline:
                number = next(numbers)
                if number >= max_requests:
                    return
                kind, trips, body = bodies[number % len(bodies)]
                sent = time.perf_counter()
                try:
                    connection.request("POST", "/predict", body, headers)
                    response = connection.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()
                    with lock:
                        report.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = (time.perf_counter() - sent) * 1e3
                answer = json.loads(data) if response.status == 200 else {}
                version = answer.get("model", {}).get("version") if answer else None
                problem = check(trips, answer) if response.status == 200 else f"status {response.status}: {data[:200]!r}"
                with lock:
                    report.latencies_ms.append(elapsed)
                    report.kinds[kind] += 1
                    report.statuses[response.status] += 1
                    report.versions[version] += 1
                    if problem is not None and len(report.wrong) < 20:
                        report.wrong.append(problem)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, name=f"load-client-{n}", daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    pending = sorted(events, key=lambda event: event[0])
    next_sample = start
    while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline + 60:
        now = time.monotonic()
        while pending and now - start >= pending[0][0]:
            pending.pop(0)[1]()
        if memory is not None and now >= next_sample:
            report.memory.append((report.requests, memory()))
            next_sample = now + sample_every
        time.sleep(0.02)
    report.seconds = time.monotonic() - start
    for thread in threads:
        thread.join(timeout=5)
    if memory is not None:
        report.memory.append((report.requests, memory()))
    return report


def commit_constant_version(registry: Registry, minutes: float, val_rmse: float) -> str:
    """Register a version whose model predicts ``minutes`` for every trip, so an answer shows which version made it.

    Committed as a run with validation RMSE ``val_rmse``: the registry promotes it if that is lower than the champion's.
    """
    import numpy as np

    from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec
    from pipeline.core.model import Model
    from pipeline.core.months import Month
    from pipeline.core.results import RunResult
    from pipeline.core.solve import Weights
    from pipeline.edge.metrics import write_metrics
    from pipeline.edge.model_files import save_model

    run = f"constant-{minutes:g}"
    with registry.staging() as staged:
        weights = Weights(float(minutes), np.zeros(N_ZONES), np.zeros(N_ZONES), np.zeros(N_PAIRS), np.zeros(0))
        save_model(Model(weights, FeatureSpec(), {"run_id": run}), staged)
        months = (Month(2023, 1), Month(2023, 2))
        result = RunResult("linear", "yellow", months, Month(2023, 3), 1e-3, (), 1, 1, val_rmse, val_rmse, 0.0, run)
        write_metrics(staged, result)
    version, _ = registry.commit(staged, lambda champion: champion.val_rmse)
    return version.name
