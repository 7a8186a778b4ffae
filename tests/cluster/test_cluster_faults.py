"""The parts of a Dask cluster a run depends on fail mid-run: the run ends in one line, in bounded time, writing nothing.

Real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1 (a cluster of the
test's own, as it is killed) and ``taxi-pipeline train`` in a subprocess, its
output folder holding a previous run's files, which must stay exactly as they were;
and a worker too small for a chunk, on a LocalCluster.
(A single worker killed mid-run is survived: tests/cluster/test_cluster_remote.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.core.months import parse_months
from pipeline.edge.synth import write_months
from tests.cli.test_cli import _one_error_line, _train
from tests.conftest import OLD_FILES, DaskProcesses

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


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
    assert {p.name: p.read_bytes() for p in output.iterdir()} == OLD_FILES
    return line


def test_a_scheduler_killed_mid_run_is_one_line_in_seconds(own_cluster, slow_months, old_output, prefect_api_url):
    kill_scheduler = own_cluster.processes[0].send_signal
    code, err, took = _train_and_kill(
        own_cluster, slow_months, old_output, {"PREFECT_API_URL": prefect_api_url}, lambda: kill_scheduler(signal.SIGKILL)
    )
    line = _assert_one_line_and_old_files(code, err, old_output)
    assert line == f"error: the Dask scheduler at {own_cluster.address} went away during train-on-dask"
    # the client's futures were cancelled when the connection dropped: no waiting out its 30 s reconnect timeout
    assert took < 25, took


def test_every_worker_killed_mid_run_is_one_line_after_the_grace(own_cluster, slow_months, old_output, prefect_api_url):
    with own_cluster.client() as client:
        workers = list(client.run(os.getpid).values())

    def kill_workers_and_nannies() -> None:
        for process in own_cluster.processes[1:]:  # the nannies first, or they start new workers
            process.send_signal(signal.SIGKILL)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)

    env = {"PREFECT_API_URL": prefect_api_url, "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": "5s"}
    code, err, took = _train_and_kill(own_cluster, slow_months, old_output, env, kill_workers_and_nannies)
    line = _assert_one_line_and_old_files(code, err, old_output)
    assert line == (
        f"error: every Dask worker of the scheduler at {own_cluster.address} went away during train-on-dask "
        "(none for 5 s; distributed.scheduler.no-workers-timeout sets how long)"
    )
    assert 5 <= took < 35, took  # the grace, and no more than a few polls after it


@pytest.fixture(scope="module")
def big_month(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3M-row training month (six 500k-row groups: one chunk at the default --chunk-rows) beside two small months."""
    folder = tmp_path_factory.mktemp("big-month")
    write_months(folder, parse_months("2023-01"), 3_000_000, seed=0, row_group_size=500_000)
    write_months(folder, parse_months("2023-02:2023-03"), 20_000, seed=0, row_group_size=10_000)
    return folder


def test_a_chunk_too_big_for_a_workers_memory_is_one_line_naming_it(big_month, tmp_path, prefect_api_url):
    """A worker of 450 MB (about 330 MB of it Python, Prefect and the flow's modules) cannot hold a 3M-row chunk: its nanny
    restarts it at each try, until Dask gives up (allowed-failures: 3) and the run names the chunk in one line."""
    args = ["--no-cache", "--n-workers", "1", "--cluster-kwargs", '{"memory_limit": "450MB"}']
    env = {
        "PREFECT_API_URL": prefect_api_url,
        "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "False",  # else a worker near its limit may pause (the watch's other line)
        "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": "20s",
    }
    result = _train(big_month, tmp_path / "out", *args, env=env)
    line = _one_error_line(result)
    month = big_month / "yellow_tripdata_2023-01.parquet"
    assert line == (
        f"error: rows 0..2,999,999 of {month} and 2 more month(s): the worker running it died at each of 4 tries "
        "(out of memory? a worker has 429.15 MiB); give each task fewer rows with a smaller --chunk-rows"
    )
    assert not (tmp_path / "out").exists()
