"""A full disk (ENOSPC) while writing run files, predictions, the statistics cache or a registry version.

The fault is injected at the one place local files are written, :func:`pipeline.edge.atomic.atomic_path`
(and the registry's history append): a write to a matching path fails with ``OSError(ENOSPC)`` once a byte
budget is spent, its temporary file cut at the budget, as a real full disk leaves it. In-process tests patch
it directly; CLI runs get it from a ``sitecustomize`` on ``PYTHONPATH``, so the Dask worker processes the
run starts are patched too. Portable: no mount, no root, runs the same everywhere.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import stats
from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec
from pipeline.core.model import Model
from pipeline.core.months import Month
from pipeline.core.results import RunResult
from pipeline.core.solve import Weights
from pipeline.edge import atomic, stats_cache
from pipeline.edge import registry as registry_module
from pipeline.edge.metrics import METRICS_FILE, write_metrics
from pipeline.edge.model_files import META_FILE, WEIGHTS_FILE, model_objects, save_model
from pipeline.edge.registry import Registry
from pipeline.edge.run_files import publish_run
from pipeline.errors import PipelineError

FULL = "No space left on device"

#: The fault layer for child processes, written as ``sitecustomize.py``: TAXI_TEST_ENOSPC holds comma-separated
#: fnmatch patterns of full paths; TAXI_TEST_ENOSPC_AFTER the bytes matching writes may take first (per process).
HOOK = """
import errno, os
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

def _install(patterns, budget):
    from pipeline.edge import atomic
    real, spent = atomic.atomic_path, [0]

    @contextmanager
    def atomic_path(path, *, parents=True):
        with real(path, parents=parents) as tmp:
            yield tmp
            if any(fnmatch(str(path), p) for p in patterns):
                size, room = tmp.stat().st_size, max(budget - spent[0], 0)
                if size > room:
                    os.truncate(tmp, room)
                    spent[0] += room
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
                spent[0] += size

    atomic.atomic_path = atomic_path

if os.environ.get("TAXI_TEST_ENOSPC"):
    _install(os.environ["TAXI_TEST_ENOSPC"].split(","), int(os.environ.get("TAXI_TEST_ENOSPC_AFTER", "0")))
"""


@contextmanager
def full_disk(monkeypatch: pytest.MonkeyPatch, *patterns: str, after: int = 0) -> Iterator[None]:
    """In this process: writes to paths matching ``patterns`` fail with ENOSPC after ``after`` bytes."""
    real, spent = atomic.atomic_path, [0]

    @contextmanager
    def atomic_path(path: Path, *, parents: bool = True) -> Iterator[Path]:
        with real(path, parents=parents) as tmp:
            yield tmp
            if any(fnmatch(str(path), p) for p in patterns):
                size, room = tmp.stat().st_size, max(after - spent[0], 0)
                if size > room:
                    os.truncate(tmp, room)
                    spent[0] += room
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
                spent[0] += size

    real_append = registry_module._append_line

    def append_line(path: Path, line: str) -> None:
        if any(fnmatch(str(path), p) for p in patterns):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_append(path, line)

    with monkeypatch.context() as patch:
        patch.setattr(atomic, "atomic_path", atomic_path)
        patch.setattr(stats_cache, "atomic_path", atomic_path)
        patch.setattr(registry_module, "_append_line", append_line)
        yield


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _model_objects(run: str) -> dict[str, bytes]:
    weights = Weights(float(len(run)), np.ones(N_ZONES), np.zeros(N_ZONES), np.zeros(N_PAIRS), np.zeros(0))
    return model_objects(Model(weights, FeatureSpec(), {"run_id": run}))


def _result(val_rmse: float, run: str) -> RunResult:
    return RunResult(
        model="linear",
        taxi="yellow",
        train_months=(Month(2023, 1), Month(2023, 2)),
        val_month=Month(2023, 3),
        alpha=1e-3,
        numeric=(),
        train_rows=1000,
        val_rows=500,
        train_rmse=val_rmse,
        val_rmse=val_rmse,
        seconds=1.0,
        flow_run_id=run,
    )


# --- in this process: each writer ----------------------------------------------------------------------------


@pytest.mark.parametrize("failing", [WEIGHTS_FILE, META_FILE, METRICS_FILE])
def test_run_files_on_a_full_disk_put_the_previous_run_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    publish_run(tmp_path, "run-1", _model_objects("run-1"), json.dumps({"flow_run_id": "run-1"}).encode())
    before = _snapshot(tmp_path)
    with full_disk(monkeypatch, f"*/{failing}"), pytest.raises(PipelineError) as error:
        publish_run(tmp_path, "run-22", _model_objects("run-22"), json.dumps({"flow_run_id": "run-22"}).encode())
    assert str(error.value).startswith(f"{tmp_path / failing}: cannot write (OSError: [Errno 28] {FULL}")
    assert _snapshot(tmp_path) == before  # byte for byte, and no temporary or set-aside file left
    assert sorted(os.listdir(tmp_path)) == sorted([METRICS_FILE, META_FILE, WEIGHTS_FILE])


@pytest.mark.parametrize("failing", ["version.json", "history.jsonl", "champion.json"])
def test_a_registry_commit_on_a_full_disk_registers_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    store = Registry.open(tmp_path / "registry", create=True)

    def stage(rmse: float, run: str) -> Path:
        with store.staging() as staged:
            save_model(Model(Weights(rmse, np.zeros(N_ZONES), np.zeros(N_ZONES), np.zeros(N_PAIRS), np.zeros(0)), FeatureSpec()), staged)
            write_metrics(staged, _result(rmse, run))
        return staged

    store.commit(stage(6.0, "run-1"), lambda champion: champion.val_rmse)
    staged = stage(5.0, "run-2")  # better: its commit would promote it
    before = _snapshot(Path(store.root))
    with full_disk(monkeypatch, f"*/{failing}"), pytest.raises((PipelineError, OSError)) as error:
        store.commit(staged, lambda champion: champion.val_rmse)
    assert FULL in str(error.value) and "\n" not in str(error.value)
    assert _snapshot(Path(store.root)) == before  # no version, no champion change, no history line; the staged run kept
    assert [v.name for v in store.versions()] == ["v0001"] and store.champion().name == "v0001"  # type: ignore[union-attr]
    assert store.commit(staged, lambda champion: champion.val_rmse)[0].name == "v0002"  # space again: undone whole, so the number is free


def test_the_statistics_cache_skips_writing_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = stats_cache.StatsCache(str(tmp_path / "cache"))
    key = "0" * 64
    value = stats.empty()
    with full_disk(monkeypatch, f"{tmp_path}/cache/*"), caplog.at_level(logging.WARNING):
        cache.put(key, value)  # no exception: a later run computes instead
    assert f"statistics cache: cannot write {tmp_path}/cache" in caplog.text and FULL in caplog.text
    assert cache.get(key) is None and os.listdir(tmp_path / "cache") == []


# --- whole runs in child processes: one line, previous files intact ------------------------------------------------


@pytest.fixture
def full_disk_env(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> dict[str, str]:
    """An environment whose Python processes (the CLI and its Dask workers) load the fault layer."""
    folder = tmp_path_factory.mktemp("fault-layer")
    (folder / "sitecustomize.py").write_text(HOOK)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PREFECT_API_URL": prefect_api_url}


def _cli(env: dict[str, str], *args: str, full: str = "", after: int = 0) -> subprocess.CompletedProcess[str]:
    fault = {"TAXI_TEST_ENOSPC": full, "TAXI_TEST_ENOSPC_AFTER": str(after)} if full else {}
    command = [sys.executable, "-m", "pipeline.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**env, **fault})


def _one_full_disk_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr and FULL in lines[0], result.stderr[-3000:]
    return lines[0]


TRAIN = ("train", "--train-months", "2023-01:2023-02", "--val-month", "2023-03", "--folds", "0", "--alphas", "0.1", "--n-workers", "1")


def test_train_and_predict_on_a_full_disk_end_in_one_line_and_keep_the_previous_files(
    months_dir: Path, full_disk_env: dict[str, str], tmp_path: Path
) -> None:
    output = tmp_path / "run"
    first = _cli(full_disk_env, *TRAIN, "--source", str(months_dir), "--output", str(output))
    assert first.returncode == 0, first.stderr[-3000:]
    run_before = _snapshot(output)

    line = _one_full_disk_line(_cli(full_disk_env, *TRAIN, "--source", str(months_dir), "--output", str(output), full="*/run/model.npz"))
    assert f"{output / 'model.npz'}: cannot write" in line
    assert _snapshot(output) == run_before

    scored = tmp_path / "scored"
    predict = (
        "predict",
        "--model",
        str(output),
        "--source",
        str(months_dir),
        "--months",
        "2023-03",
        "--output",
        str(scored),
        "--n-workers",
        "1",
    )
    assert _cli(full_disk_env, *predict).returncode == 0
    scored_before = _snapshot(scored)
    line = _one_full_disk_line(_cli(full_disk_env, *predict, full="*/part-*.parquet"))
    assert "part-" in line and _snapshot(scored) == scored_before


def test_a_run_whose_statistics_cache_is_full_still_finishes(months_dir: Path, full_disk_env: dict[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "full-cache"
    env = {**full_disk_env, "TAXI_PIPELINE_STATS_CACHE": str(cache)}
    done = _cli(env, *TRAIN, "--cache", "--source", str(months_dir), "--output", str(tmp_path / "run"), full=f"{cache}/*")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "statistics cache: cannot write" in done.stderr and FULL in done.stderr
    assert (tmp_path / "run" / METRICS_FILE).is_file()
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_retrain_on_a_full_disk_registers_no_version(months_dir: Path, full_disk_env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "registry"
    retrain = ("retrain", "--source", str(months_dir), "--registry", str(root), "--as-of", "2023-04-20", "--folds", "0", "--alphas", "0.1")
    first = _cli(full_disk_env, *retrain, "--n-workers", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _snapshot(root)
    line = _one_full_disk_line(_cli(full_disk_env, *retrain, "--n-workers", "1", full="*/versions/*/version.json"))
    assert "version.json: cannot write" in line
    assert _snapshot(root) == before and os.listdir(root / ".staging") == []
    assert [v.name for v in Registry.open(root).versions()] == ["v0001"]
