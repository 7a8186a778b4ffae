"""An error found inside a task reaches the user as its one line: exit 2, no traceback, nothing written.

On a LocalCluster and on a remote scheduler (separate ``dask`` processes), the
failures come from data, as users meet them: a damaged data page (a chunk
task), a month the HTTP source does not have (a month's locate task) and
training months too small for the folds asked (a CV task).
"""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.core.months import Month, parse_months
from pipeline.edge.sources import month_filename
from pipeline.edge.synth import write_months
from tests.cli.test_cli import _cli, _one_error_line, _train


@pytest.fixture(scope="session")
def tiny_training_months(months_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two training months of 3 trips each beside a normal validation month: 5 folds cannot all hold rows."""
    folder = tmp_path_factory.mktemp("tiny-months")
    write_months(folder, parse_months("2023-01:2023-02"), 3, seed=0)
    name = month_filename("yellow", Month(2023, 3))
    shutil.copy(months_dir / name, folder / name)
    return folder


def _cluster_flags(where: str, request: pytest.FixtureRequest) -> list[str]:
    if where == "local":
        return ["--n-workers", "1"]
    return ["--scheduler", request.getfixturevalue("dask_processes").address]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.cluster
def test_a_cv_tasks_error_is_the_one_line(where, tiny_training_months, tmp_path, prefect_api_url, request):
    result = _train(
        tiny_training_months,
        tmp_path / "out",
        "--model",
        "sgd",
        "--folds",
        "5",
        *_cluster_flags(where, request),
        env={"PREFECT_API_URL": prefect_api_url},
    )
    line = _one_error_line(result)
    assert line.startswith("error: fold ") and line.endswith("held-out rows; too few rows for this many folds"), line
    assert "PipelineError" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.cluster
def test_a_chunk_tasks_error_on_a_remote_scheduler_is_the_one_line(months_dir, tmp_path, prefect_api_url, dask_processes):
    source = tmp_path / "months"
    shutil.copytree(months_dir, source)
    path = source / month_filename("yellow", Month(2023, 1))
    column = next(
        c for c in (pq.ParquetFile(path).metadata.row_group(2).column(i) for i in range(19)) if c.path_in_schema == "DOLocationID"
    )
    damaged = bytearray(path.read_bytes())
    for i in range(64):  # inside a data page header: the footer, and so the plan, stays intact
        damaged[column.data_page_offset + 40 + i] ^= 0xFF
    path.write_bytes(bytes(damaged))
    result = _train(
        source,
        tmp_path / "out",
        "--chunk-rows",
        "10000",
        "--no-cache",
        "--scheduler",
        dask_processes.address,
        env={"PREFECT_API_URL": prefect_api_url},
    )
    line = _one_error_line(result)
    assert line.startswith(f"error: {path}: corrupt parquet data in row groups 2..2 ("), line
    assert "PipelineError" not in result.stderr and "UnfinishedRun" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture
def http_months(months_dir: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The fixture months without 2023-03, served over HTTP on 127.0.0.1: (the source URL, the missing month's URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    for month in parse_months("2023-01:2023-02"):
        shutil.copy(months_dir / month_filename("yellow", month), folder)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    source = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield source, f"{source}/{month_filename('yellow', Month(2023, 3))}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
@pytest.mark.cluster
def test_a_month_tasks_error_on_a_remote_scheduler_is_the_one_line(http_months, tmp_path, prefect_api_url, dask_processes):
    source, missing = http_months
    months = ["--train-months", "2023-01:2023-02", "--val-month", "2023-03", "--output", str(tmp_path / "out")]
    result = _cli(
        "train",
        "--source",
        source,
        *months,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--scheduler",
        dask_processes.address,
        env={"PREFECT_API_URL": prefect_api_url},
    )
    line = _one_error_line(result)
    assert "2023-03" in line and missing in line, line
    assert "PipelineError" not in result.stderr and "UnfinishedRun" not in result.stderr
    assert not (tmp_path / "out").exists()
