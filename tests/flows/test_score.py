"""Batch scoring on a real LocalCluster: every row out once, the model's own predictions, months replaced whole, a report."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.cluster import ClusterSpec
from pipeline.core.config import ScoreConfig, TrainConfig
from pipeline.core.features import FeatureSpec, training_rows
from pipeline.core.months import Month
from pipeline.edge import predictions, reader
from pipeline.edge.baseline import load_train_counts
from pipeline.edge.model_files import load_any
from pipeline.edge.sources import month_filename
from pipeline.errors import PipelineError
from pipeline.flows.score import score_flow
from pipeline.run import train
from tests.conftest import DaskProcesses, cli_here
from tests.edge.test_damaged import _damage

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def model_dir(months_dir: Path, prefect_api_url: str, one_worker: DaskProcesses, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear model with trip_distance trained on 2023-01..02 of the session's months."""
    output = tmp_path_factory.mktemp("model") / "run"
    train(
        TrainConfig(
            source=str(months_dir), train_months="2023-01:2023-02", val_month="2023-03", output=output, folds=0, numeric=("trip_distance",)
        ),
        ClusterSpec(address=one_worker.address),
    )
    return output


def _score(model_dir: Path, source: Path, output: Path, cluster: ClusterSpec, months: str = "2023-01:2023-03", **extra: object) -> object:
    """A scoring run on ``cluster``: the session's one worker (:func:`_one`) where the cluster does not matter to the test
    (a LocalCluster of its own costs seconds to start and stop)."""
    config = ScoreConfig(months=months, output=str(output), model=str(model_dir), source=str(source), **extra)
    return score_flow(config, cluster)


def _one(cluster: DaskProcesses) -> ClusterSpec:
    """The session's scheduler of one worker."""
    return ClusterSpec(address=cluster.address)


def test_every_row_is_scored_once_with_the_models_own_predictions(model_dir, months_dir, one_worker, tmp_path):
    output = tmp_path / "scored"
    two = ClusterSpec(n_workers=2, dashboard_address=":0")  # a LocalCluster of two: chunks written side by side
    result = _score(model_dir, months_dir, output, two, chunk_rows=20_000)
    model = load_any(model_dir)
    for month in (Month(2023, 1), Month(2023, 2), Month(2023, 3)):
        folder = output / f"month={month}"
        assert sorted(p.name for p in folder.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]  # 2 chunks of 20k rows
        scored = pq.read_table(folder)
        source = pq.read_table(months_dir / month_filename("yellow", month))
        assert scored.num_rows == source.num_rows  # every input row, those out of range too
        assert scored.column_names == [
            "pickup_datetime",
            "PULocationID",
            "DOLocationID",
            "predicted_minutes",
            "duration_minutes",
            "in_training_range",
        ]
        layout = reader.inspect(months_dir / month_filename("yellow", month), model.spec.columns())
        table = reader.read(layout, reader.plan(layout, layout.rows)[0])
        assert np.array_equal(scored["predicted_minutes"].to_numpy(), model.predict(table))  # to the bit
        assert np.array_equal(scored["in_training_range"].to_numpy(), training_rows(table, FeatureSpec()).keep)
    march = result.months[2]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    scored = pq.read_table(output / "month=2023-03").filter(pc.field("in_training_range"))
    error = scored["predicted_minutes"].to_numpy() - scored["duration_minutes"].to_numpy()
    assert march.in_range == metrics["val_rows"] and march.rmse == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-9)
    assert march.rmse <= metrics["val_rmse"] * (1 + 1e-9)  # metrics: the exact linear model's; predictions clipped to 1..60
    assert result.rows == sum(pq.read_metadata(months_dir / month_filename("yellow", Month(2023, m))).num_rows for m in (1, 2, 3))

    report = json.loads((output / "report.json").read_text())
    assert report["breaches"] == 0 and [m["month"] for m in report["months"]] == ["2023-01", "2023-02", "2023-03"]
    assert max(m["psi_pair"] for m in report["months"]) < 0.2  # months of the same city: no false alarm
    assert (output / "report.png").read_bytes().startswith(b"\x89PNG")
    text = (output / "report.md").read_text()
    assert "No breach over 3 months" in text and "![RMSE and drift per month](report.png)" in text
    assert load_train_counts(model_dir).sum() == metrics["train_rows"]

    # a rerun with another chunking replaces each month's parts whole: no stale part survives,
    # and it removes what a killed run left (its staging, a month's old parts moved aside)
    _leftover(output, ".staging-killed", {"run": "killed", "host": socket.gethostname(), "pid": _ended_pid(), "since": time.time()})
    _leftover(output, ".old-0123abcd-month=2023-02", None, part="part-00000.parquet")
    _score(model_dir, months_dir, output, _one(one_worker), months="2023-02", chunk_rows=40_000)
    assert sorted(p.name for p in (output / "month=2023-02").iterdir()) == ["part-00000.parquet"]
    assert (
        pq.read_table(output / "month=2023-02").num_rows == pq.read_metadata(months_dir / month_filename("yellow", Month(2023, 2))).num_rows
    )
    assert not [p for p in output.iterdir() if p.name.startswith(".")]  # no staging or old folders left


def test_a_registry_version_is_named_in_the_report_and_tasks_by_their_months(months_dir, one_worker, tmp_path):
    """The UI: task runs say which month each scored; the artifact's title names the version and carries its chart inside."""
    import base64
    import re

    from prefect.client.orchestration import get_client

    from pipeline.edge.registry import Registry
    from pipeline.service.testing import commit_constant_version
    from tests.conftest import read_task_runs

    registry = Registry.open(tmp_path / "registry", create=True)
    commit_constant_version(registry, 12.0, 5.0)
    config = ScoreConfig(months="2023-02:2023-03", output=str(tmp_path / "scored"), registry=str(registry.root), source=str(months_dir),
                         chunk_rows=20_000)  # fmt: skip
    result = score_flow(config, _one(one_worker))
    names = sorted(r.name for r in read_task_runs(result.flow_run_id, expected=4) if r.name.startswith("score-chunk"))
    assert names == ["score-chunk 2023-02 1/2", "score-chunk 2023-02 2/2", "score-chunk 2023-03 1/2", "score-chunk 2023-03 2/2"]
    with get_client(sync_client=True) as client:  # raw filter, as test_flow's: the client's hides flow-level artifacts
        found = client.request(
            "POST",
            "/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [result.flow_run_id]}, "key": {"any_": ["monitoring-report"]}}},
        ).json()
    markdown = found[0]["data"]
    assert markdown.startswith(f"# Monitoring: 2 month(s) scored with model v0001 of {registry.root}\n")
    assert "](report.png)" not in markdown
    (image,) = re.findall(r"!\[RMSE and drift per month\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert base64.b64decode(image) == (tmp_path / "scored" / "report.png").read_bytes()
    assert "](report.png)" in (tmp_path / "scored" / "report.md").read_text()  # the file beside it resolves
    # narrow tables (at most 6 columns, short headers), as the UI shows them whole at 1400 px: `make ui-check` looks
    lines = markdown.splitlines()
    headers = [line for line, rule in pairwise(lines) if re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", rule)]
    assert len(headers) == 2 and all(line.count("|") - 1 <= 6 and len(line) <= 80 for line in headers)


#: In the artifact page, once its chart has loaded: the chart's size and address, how far each table reaches beyond
#: the box that holds it (the UI scrolls a wide table inside a box as wide as the text: what is beyond is cut off),
#: and the breaches listed.
_LAYOUT = """(() => {
  const image = document.querySelector('img[alt="RMSE and drift per month"]');
  if (!image || !image.complete) return null;
  return {image: [image.naturalWidth, image.naturalHeight, image.src.slice(0, 22)],
          beyond: [...document.querySelectorAll('table')].map(t => t.parentElement.scrollWidth - t.parentElement.clientWidth),
          items: [...document.querySelectorAll('li')].map(li => li.textContent.trim()).filter(t => /^2023-/.test(t))};
})()"""


@pytest.mark.browser
def test_the_monitoring_report_renders_whole_in_the_prefect_ui(model_dir, months_dir, prefect_server, tmp_path):
    """``predict`` against a real ``prefect server``, its artifact page opened in headless Chromium at 1400 px: the
    embedded chart decodes, no table is cut off, every breach is listed."""
    import urllib.request

    from tests.chromium import evaluate

    args = ["predict", "--model", str(model_dir), "--source", str(months_dir), "--months", "2023-02:2023-03"]
    args += ["--output", str(tmp_path / "scored"), "--max-psi", "0.0001", "--n-workers", "1"]  # every PSI breaches
    command = [sys.executable, "-m", "pipeline.cli", *args]
    done = subprocess.run(command, env=prefect_server.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "scored" / "report.json").read_text())
    request = urllib.request.Request(
        f"{prefect_server.url}/artifacts/filter",
        data=json.dumps({"artifacts": {"flow_run_id": {"any_": [report["flow_run_id"]]}, "key": {"any_": ["monitoring-report"]}}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        (artifact,) = json.load(answer)
    page = evaluate(f"{prefect_server.url.removesuffix('/api')}/artifacts/artifact/{artifact['id']}", _LAYOUT, width=1400, height=1000)
    png = (tmp_path / "scored" / "report.png").read_bytes()
    assert page["image"] == [int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"), "data:image/png;base64,"]
    assert page["beyond"] == [0, 0]
    assert page["items"] == [f"{m['month']}: {breach}" for m in report["months"] for breach in m["breaches"]]
    assert len(page["items"]) == 6


def test_a_failed_chunk_leaves_every_month_as_it_was(model_dir, months_dir, one_worker, tmp_path):
    """A damaged row group in the last month: its one line, no month replaced (the first two were scored), nothing staged left."""
    source = tmp_path / "months"
    shutil.copytree(months_dir, source)
    output = tmp_path / "scored"
    _score(model_dir, source, output, _one(one_worker))
    before = {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    damaged = source / month_filename("yellow", Month(2023, 3))
    _damage(damaged, row_group=3)
    with pytest.raises(PipelineError) as info:
        _score(model_dir, source, output, _one(one_worker), chunk_rows=10_000)  # 12 chunks; 2023-03's last fails
    assert str(info.value).startswith(f"{damaged}: corrupt parquet data in row groups 3..3 (")
    assert {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file()} == before
    assert not [p for p in output.iterdir() if p.name.startswith(".")]


def test_a_month_with_reshuffled_pickup_zones_breaches(model_dir, months_dir, one_worker, tmp_path):
    source = tmp_path / "months"
    source.mkdir()
    path = months_dir / month_filename("yellow", Month(2023, 3))
    table = pq.read_table(path)
    pu = table["PULocationID"].to_numpy().astype(np.int64)
    shuffled = np.random.default_rng(3).permutation(np.arange(1, 266))[pu - 1]
    column = table.schema.get_field_index("PULocationID")
    pq.write_table(table.set_column(column, "PULocationID", pa.array(shuffled).cast(table["PULocationID"].type)), source / path.name)
    result = _score(model_dir, source, tmp_path / "scored", _one(one_worker), months="2023-03", max_psi=0.2)
    (march,) = result.months
    assert march.psi_pickup > 0.2 and any(b.startswith("pickup PSI") for b in march.breaches)
    report = json.loads((tmp_path / "scored" / "report.json").read_text())
    assert report["breaches"] == len(march.breaches) >= 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300, env={**os.environ})


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_predict_prints_its_flow_lines_and_table_not_dasks(model_dir, months_dir, tmp_path):
    """The CLI's terminal: the run's lines and the month table; Dask's own INFO lines (scheduler, nannies) stay off it."""
    output = tmp_path / "scored"
    result = _cli("predict", "--model", str(model_dir), "--source", str(months_dir), "--months", "2023-03", "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert "Beginning subflow run" in result.stderr and "scored 40,000 rows" in result.stdout
    assert not [line for line in result.stderr.splitlines() if "| distributed." in line], result.stderr
    assert pq.read_table(output / "month=2023-03").num_rows == 40_000


def test_bad_input_is_one_line_and_writes_nothing(model_dir, months_dir, tmp_path):
    base = ["predict", "--source", str(months_dir), "--months", "2023-03"]
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    assert str(not_a_model) in _one_error_line(cli_here(*base, "--model", str(not_a_model), "--output", str(tmp_path / "a")))
    line = _one_error_line(
        cli_here(
            "predict",
            "--source",
            str(months_dir),
            "--months",
            "2023-03:2023-04",
            "--model",
            str(model_dir),
            "--output",
            str(tmp_path / "b"),
        )
    )
    assert "month 2023-04" in line and "file not found" in line
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "exists and is not a folder" in _one_error_line(cli_here(*base, "--model", str(model_dir), "--output", str(a_file)))
    assert "--registry" in _one_error_line(cli_here(*base, "--output", str(tmp_path / "c")))
    tampered = tmp_path / "tampered"
    shutil.copytree(model_dir, tampered)
    np.savez(tampered / "model.npz", intercept=np.zeros(1), pu=np.zeros(3), do=np.zeros(266), pair=np.zeros(266 * 266), numeric=np.zeros(1))
    assert "model.npz" in _one_error_line(cli_here(*base, "--model", str(tampered), "--output", str(tmp_path / "d")))
    assert not [p for p in (tmp_path / name for name in "abcd") if p.exists()]


STAGED_PART = "month=2023-01/part-00000.parquet"


def _ended_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _leftover(output: Path, name: str, mark: dict[str, object] | None, age: float = 0.0, part: str = STAGED_PART) -> Path:
    """A folder a run left in ``output``: a ``part`` in it, ``mark`` as its ``.open``, last touched ``age`` s ago."""
    folder = output / name
    (folder / part).parent.mkdir(parents=True)
    (folder / part).write_bytes(b"PAR1")
    if mark is not None:
        (folder / ".open").write_text(json.dumps(mark))
    os.utime(folder, (time.time() - age, time.time() - age))
    return folder


def test_leftovers_of_killed_and_stopped_runs_go_and_live_runs_stay(tmp_path):
    """Removed: a staging whose process ended, one without its mark for a minute, old parts the new month replaced.
    Put back: old parts whose new month never came. Kept: the months, a staging of a live run, of a run on
    another host, or without its mark only just now."""
    output = tmp_path / "out"
    (output / "month=2023-01").mkdir(parents=True)
    (output / "month=2023-01" / "part-00000.parquet").write_bytes(b"published")
    here = socket.gethostname()
    _leftover(output, ".staging-killed", {"run": "killed", "host": here, "pid": _ended_pid(), "since": time.time()})
    _leftover(output, ".staging-discarded", None, age=predictions.UNMARKED_AFTER + 60)
    _leftover(output, ".old-0123abcd-month=2023-01", None, part="part-00000.parquet")  # the swap was done: month=2023-01 is the new one
    _leftover(output, ".old-4567ef01-month=2023-02", None, part="part-00000.parquet")  # killed between its renames: only the old month
    predictions.Staging.of(output, "running").open([Month(2023, 1)], "running")  # this process: alive
    _leftover(output, ".staging-elsewhere", {"run": "elsewhere", "host": f"not-{here}", "pid": _ended_pid(), "since": 0})
    _leftover(output, ".staging-discarding", None)
    _leftover(output, ".staging-old-version", None, age=3600)
    (output / ".staging-old-version" / ".open").write_bytes(b"")  # an earlier version's mark: not judged

    done = predictions.remove_leftovers(output)

    assert done == [
        "removed .old-0123abcd-month=2023-01",
        "put .old-4567ef01-month=2023-02 back as month=2023-02",
        "removed .staging-discarded",
        "removed .staging-killed",
    ]
    assert sorted(p.name for p in output.iterdir()) == [
        ".staging-discarding",
        ".staging-elsewhere",
        ".staging-old-version",
        ".staging-running",
        "month=2023-01",
        "month=2023-02",
    ]
    assert (output / "month=2023-01" / "part-00000.parquet").read_bytes() == b"published"
    assert (output / "month=2023-02" / "part-00000.parquet").read_bytes() == b"PAR1"
    assert (output / ".staging-running" / "month=2023-01").is_dir()
    assert predictions.remove_leftovers(output) == []


def test_a_part_written_while_its_staging_is_discarded_is_refused_and_nothing_stays(tmp_path, monkeypatch):
    """A chunk checked the mark just before a stopped run discarded its staging, and writes its part while the
    folder is being removed (after ``rmtree`` listed it): the write must fail and the output stay empty."""
    output, month = tmp_path / "out", Month(2023, 1)
    staging = predictions.Staging.of(output, "stopped")
    staging.open([month], "stopped")
    part = staging.month(month).child("part-00000.parquet").path
    real_rmdir, late = os.rmdir, []

    def rmdir(path, *args, **kwargs):  # the late chunk's write lands right before its month folder is removed
        if not late and str(path) == part.parent.name:
            try:
                part.write_bytes(b"PAR1")
                late.append("written")
            except FileNotFoundError:
                late.append("refused")
        return real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", rmdir)
    staging.discard()
    assert late == ["refused"]
    assert list(output.iterdir()) == []
