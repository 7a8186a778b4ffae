"""The parts of a Dask cluster a run depends on fail mid-run: the run ends in one line, in seconds, writing nothing.

Real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1 (a cluster of the
test's own, as it is killed) and ``taxi-pipeline train`` in a subprocess, its
output folder holding a previous run's files, which must stay exactly as they were.
(A single worker killed mid-run is survived: tests/cluster/test_cluster_remote.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import DaskProcesses

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

#: A previous run's files in the output folder: a failed run leaves them as they are, and adds none.
_OLD = {"model.json": b'{"old": "model"}', "model.npz": b"old weights", "metrics.json": b'{"old": "metrics"}'}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DaskProcesses]:
    """A scheduler and two workers of this test alone."""
    (tmp_path / "dask").mkdir()
    processes = DaskProcesses(tmp_path / "dask")
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def old_output(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    for name, data in _OLD.items():
        (folder / name).write_bytes(data)
    return folder


def _train_and_kill(
    cluster: DaskProcesses, source: Path, output: Path, env: dict[str, str], kill: Callable[[], None]
) -> tuple[int, str, float]:
    """Run ``train`` on ``cluster``; call ``kill`` once a chunk task runs. The exit code, stderr and seconds from kill to exit."""
    args = ["train", "--source", str(source), "--train-months", "2023-01:2023-02", "--val-month", "2023-03", "--output", str(output)]
    args += ["--chunk-rows", "2000", "--no-cache", "--scheduler", cluster.address]
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        with cluster.client() as client:
            deadline = time.monotonic() + 180
            while not any(str(key).startswith("chunk") for keys in client.processing().values() for key in keys):
                assert process.poll() is None and time.monotonic() < deadline, "the run ended before a chunk task ran"
                time.sleep(0.05)
        kill()
        killed = time.monotonic()
        _, err = process.communicate(timeout=180)
        return process.returncode, err, time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _assert_one_line_and_old_files(code: int, err: str, output: Path) -> str:
    assert code == 2, err
    assert "Traceback" not in err and "Error logging" not in err, err
    line = err.rstrip().splitlines()[-1]
    assert [x for x in err.splitlines() if x.startswith("error:")] == [line], err
    assert {p.name: p.read_bytes() for p in output.iterdir()} == _OLD
    return line


def test_a_scheduler_killed_mid_run_is_one_line_in_seconds(cluster, slow_months, old_output, prefect_api_url):
    code, err, took = _train_and_kill(
        cluster, slow_months, old_output, {"PREFECT_API_URL": prefect_api_url}, lambda: cluster.processes[0].send_signal(signal.SIGKILL)
    )
    line = _assert_one_line_and_old_files(code, err, old_output)
    assert line == f"error: the Dask scheduler at {cluster.address} went away during train-on-dask"
    # the client's futures were cancelled when the connection dropped: no waiting out its 30 s reconnect timeout
    assert took < 25, took


def test_every_worker_killed_mid_run_is_one_line_after_the_grace(cluster, slow_months, old_output, prefect_api_url):
    with cluster.client() as client:
        workers = list(client.run(os.getpid).values())

    def kill_workers_and_nannies() -> None:
        for process in cluster.processes[1:]:  # the nannies first, or they start new workers
            process.send_signal(signal.SIGKILL)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)

    env = {"PREFECT_API_URL": prefect_api_url, "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": "5s"}
    code, err, took = _train_and_kill(cluster, slow_months, old_output, env, kill_workers_and_nannies)
    line = _assert_one_line_and_old_files(code, err, old_output)
    assert line == (
        f"error: every Dask worker of the scheduler at {cluster.address} went away during train-on-dask "
        "(none for 5 s; distributed.scheduler.no-workers-timeout sets how long)"
    )
    assert 5 <= took < 35, took  # the grace, and no more than a few polls after it
