"""The run's Prefect API: what a run logged is in it by the time the run leaves, and leaving waits on no retries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest

from pipeline.runtime.prefect_api import prefect_api
from tests.conftest import read_log_messages

pytestmark = pytest.mark.prefect_api


def test_a_runs_logs_are_in_its_api_when_the_run_leaves(prefect_api_url: str) -> None:
    """Prefect sends logs in batches every 2 s; leaving the run's API scope sends what is pending at once.

    A run forked by the local stack's relay ends in ``os._exit``, which runs no exit hook: without this its last logs
    were lost.
    """
    from prefect import flow, get_run_logger
    from prefect.runtime import flow_run

    marker = f"last words {uuid4().hex}"

    @flow
    def speaks() -> str:
        get_run_logger().info(marker)
        return str(flow_run.id)

    with prefect_api(prefect_api_url):
        flow_run_id = speaks()
    assert marker in read_log_messages(flow_run_id)


_OWN_API_RUN = """
from prefect import flow, get_run_logger
from pipeline.runtime.prefect_api import prefect_api

@flow
def speaks():
    get_run_logger().info("last words")

with prefect_api():
    speaks()
print("left")
"""


def test_leaving_a_temporary_api_sends_first_then_exits_without_retrying_against_it(tmp_path: Path) -> None:
    """Logs still held at exit were sent after the API stopped: five retries (62 s), then an error on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    result = subprocess.run([sys.executable, "-c", _OWN_API_RUN], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "left", result.stderr
    assert "Error logging to API" not in result.stderr
