"""The CLI contract: flags as documented, one error line and exit 2 for bad input, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.core.months import Month
from pipeline.edge.sources import month_filename
from tests.conftest import cli_here


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


def _train(
    source: Path, output: Path, *extra: str, env: dict[str, str] | None = None, here: bool = False
) -> subprocess.CompletedProcess[str]:
    """``taxi-pipeline train`` on the session's three months; ``here``: in this process (:func:`cli_here`), for a refusal."""
    return (cli_here if here else _cli)(
        "train",
        "--source",
        str(source),
        "--train-months",
        "2023-01:2023-02",
        "--val-month",
        "2023-03",
        "--output",
        str(output),
        *extra,
        env=env,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def months_copy(months_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "months"
    shutil.copytree(months_dir, folder)
    return folder


def test_synth_writes_the_named_months(tmp_path):
    result = _cli("synth", "--output", str(tmp_path), "--months", "2023-01,2023-03", "--rows", "1000", "--taxi", "green", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["green_tripdata_2023-01.parquet", "green_tripdata_2023-03.parquet"]
    assert pq.read_metadata(tmp_path / "green_tripdata_2023-03.parquet").num_rows == 1000


def test_missing_month_file(months_copy, tmp_path):
    """In a process of its own, as a user runs it: exit code 2 and one line on stderr (the other refusals run in this one)."""
    (months_copy / month_filename("yellow", Month(2023, 2))).unlink()
    line = _one_error_line(_train(months_copy, tmp_path / "out"))
    assert "month 2023-02" in line and "yellow_tripdata_2023-02.parquet" in line
    assert not (tmp_path / "out").exists()


def test_missing_required_column(months_copy, tmp_path):
    path = months_copy / month_filename("yellow", Month(2023, 1))
    pq.write_table(pq.read_table(path).drop(["DOLocationID"]), path)
    line = _one_error_line(_train(months_copy, tmp_path / "out", here=True))
    assert str(path) in line and "DOLocationID" in line
    assert not (tmp_path / "out").exists()


def test_corrupt_parquet(months_copy, tmp_path):
    path = months_copy / month_filename("yellow", Month(2023, 3))
    path.write_bytes(path.read_bytes()[:5000])
    line = _one_error_line(_train(months_copy, tmp_path / "out", here=True))
    assert str(path) in line and "corrupt" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--train-months", "2023-13", "--val-month", "2023-03"], "--train-months"),
        (["--train-months", "2023-01", "--val-month", "2023-03:2023-04"], "--val-month"),
        (["--train-months", "2023-01", "--val-month", "2023-03", "--alphas", "-1"], "--alphas -1: every alpha must be a positive number"),
        (["--train-months", "2023-01", "--val-month", "2023-03", "--alphas", "0.1,zero"], "--alphas"),
        (["--train-months", "2023-01", "--val-month", "2023-03", "--n-workers", "zero"], "--n-workers"),
        (["--train-months", "2023-01", "--val-month", "2023-03", "--folds", "1"], "--folds 1: one fold cannot cross-validate"),
        (
            ["--train-months", "2023-01", "--val-month", "2023-03", "--folds", "0", "--alphas", "0.1,1"],
            "--alphas 0.1,1 with --folds 0: without cross-validation nothing chooses among alphas",
        ),
        (["--train-months", "2023-01", "--val-month", "2023-03", "--cv", "time"], "--cv time: needs at least two --train-months"),
        (
            ["--train-months", "2023-01", "--val-month", "2023-03", "--model", "sgd", "--cv", "time"],
            "--cv time: supported for --model linear",
        ),
        (
            ["--train-months", "2023-01", "--val-month", "2023-03", "--model", "sgd", "--alphas", "1,2"],
            "--alphas: an alpha grid applies to --model linear",
        ),
        (["--train-months", "2023-01", "--val-month", "2023-03", "--model", "forest"], "--model"),
        (["--train-months", "2023-01", "--val-month", "2023-03", "--taxi", "blue"], "--taxi"),
    ],
)
def test_malformed_flags_and_broken_rules_name_the_flag(months_dir, tmp_path, args, needle):
    line = _one_error_line(cli_here("train", "--source", str(months_dir), "--output", str(tmp_path / "out"), *args))
    assert needle in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("folds", [[], ["--folds", "0"]])
def test_validation_month_among_training_months_is_refused(months_dir, tmp_path, folds):
    result = cli_here(
        "train",
        "--source",
        str(months_dir),
        "--output",
        str(tmp_path / "out"),
        "--train-months",
        "2023-01:2023-03",
        "--val-month",
        "2023-03",
        *folds,
    )
    line = _one_error_line(result)
    assert line == ("error: --val-month 2023-03 is also in --train-months: the model would be validated on rows it was trained on")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.cluster
def test_month_empty_after_filtering_fails_in_the_flow(months_copy, tmp_path, prefect_api_url, one_worker):
    path = months_copy / month_filename("yellow", Month(2023, 3))
    table = pq.read_table(path)
    column = table.schema.get_field_index("tpep_dropoff_datetime")
    pq.write_table(table.set_column(column, "tpep_dropoff_datetime", table["tpep_pickup_datetime"]), path)
    result = _train(months_copy, tmp_path / "out", "--scheduler", one_worker.address, env={"PREFECT_API_URL": prefect_api_url})
    line = _one_error_line(result)
    assert "month 2023-03" in line and "no trips left" in line and str(path) in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.cluster
def test_train_writes_metrics_model_and_prints_the_table(months_dir, tmp_path, prefect_api_url):
    result = _train(months_dir, tmp_path / "out", "--n-workers", "1", env={"PREFECT_API_URL": prefect_api_url})
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {"train_rows", "val_rows", "train_rmse", "val_rmse", "seconds"} <= metrics.keys()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "model.json", "model.npz", "train_counts.npz"]
    assert f"{metrics['val_rmse']:,.4f}" in result.stdout
    # bokeh is a dependency, so the scheduler draws the dashboard: its link, on 127.0.0.1
    assert "Dask dashboard: http://127.0.0.1:" in result.stderr and "not served" not in result.stderr
    assert "The Dask dashboard is available at" not in result.stderr  # prefect-dask's unchecked link stays off the terminal
    assert f"Prefect API: {prefect_api_url}" in result.stderr


@pytest.mark.slow
@pytest.mark.cluster
def test_a_damaged_data_page_is_the_chunk_tasks_one_line_not_a_pending_downstream_task(months_copy, tmp_path, prefect_api_url, one_worker):
    path = months_copy / month_filename("yellow", Month(2023, 2))
    column = next(
        c for c in (pq.ParquetFile(path).metadata.row_group(1).column(i) for i in range(19)) if c.path_in_schema == "PULocationID"
    )
    damaged = bytearray(path.read_bytes())
    for i in range(64):  # inside the data of row group 1's PULocationID page, past its header: the footer stays intact
        damaged[column.data_page_offset + 256 + i] ^= 0xFF
    path.write_bytes(bytes(damaged))
    args = ("--scheduler", one_worker.address, "--folds", "0", "--chunk-rows", "10000")
    result = _train(months_copy, tmp_path / "out", *args, env={"PREFECT_API_URL": prefect_api_url})
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"error: {path}: corrupt parquet data in row groups 1..1 (")
    assert "CRC checksum verification failed" in last  # synth writes page checksums: caught however the bytes decode
    assert "UnfinishedRun" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("columns", ["40", "80", "200"])
def test_models_list_shows_whole_creation_times_at_any_width(tmp_path, columns):
    """The created column was cut to `2026-12-07T0…` in an 80-column terminal. The width is set here, never read."""
    import re

    from pipeline.edge.registry import Registry
    from pipeline.service.testing import commit_constant_version

    registry = Registry.open(tmp_path / "registry", create=True)
    for minutes, rmse in ((10.0, 5.0), (11.0, 6.0)):
        commit_constant_version(registry, minutes, rmse)
    listed = _cli("models", "list", "--registry", str(registry.root), env={"COLUMNS": columns})
    assert listed.returncode == 0, listed.stderr
    created = [v.created for v in registry.versions()]
    shown = re.findall(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", listed.stdout)
    assert [s.replace(" UTC", "") for s in shown] == [c[:16].replace("T", " ") for c in created], listed.stdout
    assert "v0001" in listed.stdout and "v0002" in listed.stdout and "…" not in listed.stdout


@pytest.mark.slow
@pytest.mark.cluster
def test_demo_regenerates_months_of_another_size_and_says_so(tmp_path, prefect_api_url, one_worker):
    """`make demo` reused smaller months left in data/synth and trained on them without a word."""
    data = tmp_path / "synth"
    assert _cli("synth", "--output", str(data), "--months", "2023-01:2023-02", "--rows", "1000").returncode == 0
    result = _cli("demo", "--data", str(data), "--output", str(tmp_path / "out"), "--rows", "3000", "--scheduler", one_worker.address,
                  env={"PREFECT_API_URL": prefect_api_url})  # fmt: skip
    assert result.returncode == 0, result.stderr
    for month in ("2023-01", "2023-02"):
        assert f"month {month} holds 1,000 rows, not 3,000: generating it again" in result.stderr
    assert "generating 3 month(s) of 3,000 rows" in result.stderr  # 2023-03 was missing
    for month in (Month(2023, 1), Month(2023, 2), Month(2023, 3)):
        assert pq.read_metadata(data / month_filename("yellow", month)).num_rows == 3000
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [m["rows_read"] for m in metrics["months"]] == [3000, 3000, 3000]
