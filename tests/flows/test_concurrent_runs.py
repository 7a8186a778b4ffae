"""Two runs at once: the same --output, the same statistics cache and the same PREFECT_HOME (issue 13, concurrent runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.stats import Packed
from pipeline.edge.metrics import METRICS_FILE
from pipeline.edge.model_files import META_FILE
from pipeline.edge.stats_cache import decode


@pytest.mark.slow
@pytest.mark.prefect_api
@pytest.mark.cluster
def test_two_runs_into_one_output_sharing_a_cache_and_prefect_home_both_finish_and_leave_one_runs_files(
    months_dir: Path, tmp_path: Path
) -> None:
    output, cache, home = tmp_path / "out", tmp_path / "stats", tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # each run starts its own temporary API
    env.update(PREFECT_HOME=str(home), TAXI_PIPELINE_STATS_CACHE=str(cache))
    command = [sys.executable, "-m", "pipeline.cli", "train", "--source", str(months_dir), "--train-months", "2023-01:2023-02",
               "--val-month", "2023-03", "--output", str(output), "--folds", "2", "--n-workers", "1"]  # fmt: skip
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    finished = [run.communicate(timeout=300) for run in runs]
    for run, (_, stderr) in zip(runs, finished):
        assert run.returncode == 0, stderr
    metrics = json.loads((output / METRICS_FILE).read_text())
    model = json.loads((output / META_FILE).read_text())
    assert model["run_id"] == metrics["flow_run_id"]  # one run's complete set, never a mix
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith(".")) == [
        "metrics.json", "model.json", "model.npz", "train_counts.npz"
    ]  # fmt: skip
    assert not [p for p in cache.iterdir() if not p.name.endswith(".npz")]  # no temporary or torn file left
    entries = sorted(cache.glob("*.npz"))
    assert len(entries) == 3  # one entry a month (a chunk each), both runs agreeing on the keys
    for entry in entries:
        assert isinstance(decode(entry.read_bytes(), entry.stem, Packed), Packed)  # each one whole
