"""The run's Prefect API dies mid-run, or is down at the start: one line, in seconds, nothing written (issue 22, case 1).

A real ``prefect server start`` on 127.0.0.1 of each test's own (it is killed with
SIGKILL about 1 s into the run's subflow) and ``train``, ``predict`` and
``retrain`` in a subprocess pointed at it by ``PREFECT_API_URL``; and the API of
a local stack (``taxi-pipeline up``) killed the same way under a ``train``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pipeline.edge.ports import free_port
from pipeline.runtime import stack_record
from pipeline.runtime.testing import PrefectServer
from tests.conftest import OLD_FILES, month_model

pytestmark = [pytest.mark.slow, pytest.mark.prefect_api]


@pytest.fixture(scope="module")
def trained(slow_months: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model to score with (solved from one month's statistics: no run of its own)."""
    return month_model(slow_months, tmp_path_factory.mktemp("model") / "run")


def _TRAIN(source: Path) -> list[str]:
    return ["--source", str(source), "--train-months", "2023-01:2023-02", "--val-month", "2023-03"]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


def _run_and_kill_api(args: list[str], server: PrefectServer) -> tuple[int, list[str], float]:
    """Run the CLI against ``server``; SIGKILL the server 1 s after the subflow began. Exit code, stderr lines, seconds to exit."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_API_URL=server.url)
    return _run_and_kill(args, env, server.process.pid)  # `prefect server start` serves in-process: no child to orphan


def _run_and_kill(args: list[str], env: dict[str, str], pid: int) -> tuple[int, list[str], float]:
    """Run the CLI; SIGKILL ``pid`` 1 s after the subflow began. Exit code, stderr lines, seconds to exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in process.stderr), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any("Beginning subflow run" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "\n".join(lines)
            time.sleep(0.05)
        time.sleep(1)
        assert process.poll() is None, "\n".join(lines)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        code = process.wait(timeout=120)
        took = time.monotonic() - killed
        reader.join(timeout=10)
        return code, lines, took
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _assert_one_line(code: int, lines: list[str], url: str, took: float) -> None:
    assert code == 2, "\n".join(lines)
    assert lines[-1] == f"error: the Prefect API at {url} went away during the run; nothing was written", "\n".join(lines)
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert not any("Traceback" in line or "Error logging" in line for line in lines), "\n".join(lines)
    assert took < 30, took  # three missed health checks half a second apart, not Prefect's retries


def test_train_whose_api_dies_ends_in_one_line_leaving_the_old_files(own_server, slow_months, old_output):
    args = ["train", *_TRAIN(slow_months), "--output", str(old_output), "--chunk-rows", "2000", "--no-cache", "--n-workers", "1"]
    code, lines, took = _run_and_kill_api(args, own_server)
    _assert_one_line(code, lines, own_server.url, took)
    assert {p.name: p.read_bytes() for p in old_output.iterdir()} == OLD_FILES


def test_predict_whose_api_dies_ends_in_one_line_publishing_no_month(own_server, slow_months, trained, tmp_path):
    output = tmp_path / "scored"
    args = ["predict", "--model", str(trained), "--source", str(slow_months), "--months", "2023-01:2023-03", "--output", str(output)]
    code, lines, took = _run_and_kill_api([*args, "--chunk-rows", "2000", "--n-workers", "1"], own_server)
    _assert_one_line(code, lines, own_server.url, took)
    # only the run's hidden staging folder, which the next run into this folder clears
    assert [p.name for p in output.iterdir() if not p.name.startswith(".staging-")] == []


def test_retrain_whose_api_dies_ends_in_one_line_registering_nothing(own_server, slow_months, tmp_path):
    registry = tmp_path / "registry"
    args = ["retrain", "--registry", str(registry), "--source", str(slow_months), "--as-of", "2023-04-01", "--no-boosted"]
    code, lines, took = _run_and_kill_api([*args, "--chunk-rows", "2000", "--n-workers", "1"], own_server)
    _assert_one_line(code, lines, own_server.url, took)
    assert not (registry / "champion.json").exists()
    assert not list((registry / "versions").glob("v*")) if (registry / "versions").exists() else True


def test_a_run_whose_api_is_down_says_so_before_starting_a_cluster(months_dir, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/api"
    done = _run(["train", *_TRAIN(months_dir), "--output", str(tmp_path / "out")], {"PREFECT_API_URL": url})
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"error: the Prefect API at {url} (PREFECT_API_URL) does not answer (ConnectError: [Errno 111] Connection refused); "
        "start it, or point PREFECT_API_URL elsewhere"
    ]
    assert not (tmp_path / "out").exists()


def test_a_run_on_the_local_stack_whose_api_dies_ends_in_one_line(slow_months, tmp_path, tmp_path_factory):
    """The run goes to the stack's relay, which forks it: the exit code comes back through the relay."""
    home = tmp_path_factory.mktemp("stack-home")  # a short path: the relay's unix socket lives there (108 bytes at most)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    started = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "up", "--port", str(free_port()), "--n-workers", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = home / "taxi-pipeline-stack.log"
    assert started.returncode == 0, started.stderr + (log.read_text()[-3000:] if log.exists() else "")
    try:
        stack = stack_record.Stack(**json.loads((home / stack_record.RECORD).read_text()))
        api = next(p for p in psutil.Process(stack.pid).children() if "server" in p.cmdline())  # `prefect server start`
        output = tmp_path / "out"
        code, lines, took = _run_and_kill(["train", *_TRAIN(slow_months), "--output", str(output), "--chunk-rows", "2000"], env, api.pid)
        _assert_one_line(code, lines, stack.api_url, took)
        assert not output.exists()
    finally:
        subprocess.run([sys.executable, "-m", "pipeline.cli", "down"], env=env, capture_output=True, timeout=300)
