"""A run's files replace the previous run's as one set, also when two processes write the same folder at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec
from pipeline.core.model import Model
from pipeline.core.solve import Weights
from pipeline.edge import run_files
from pipeline.edge.baseline import COUNTS_FILE, train_counts_bytes
from pipeline.edge.metrics import METRICS_FILE
from pipeline.edge.model_files import ESTIMATOR_FILE, META_FILE, WEIGHTS_FILE, load_model, model_objects
from pipeline.edge.run_files import LOCK_FILE, publish_run
from pipeline.errors import PipelineError


def _objects(run: str, with_counts: bool) -> dict[str, bytes]:
    """A real linear model's files whose intercept is the run's number, with or without ``train_counts.npz``."""
    weights = Weights(float(run.split("-")[-1]), np.zeros(N_ZONES), np.zeros(N_ZONES), np.zeros(N_PAIRS), np.zeros(0))
    objects = {COUNTS_FILE: train_counts_bytes(np.ones(N_PAIRS, np.int64))} if with_counts else {}
    return {**objects, **model_objects(Model(weights, FeatureSpec(), {"run_id": run}))}


def _metrics(run: str) -> bytes:
    return json.dumps({"flow_run_id": run}).encode()


def test_a_run_of_another_format_leaves_no_file_of_the_previous_run(tmp_path: Path) -> None:
    publish_run(tmp_path, "run-1", _objects("run-1", with_counts=True), _metrics("run-1"))
    assert sorted(os.listdir(tmp_path)) == sorted([COUNTS_FILE, METRICS_FILE, META_FILE, WEIGHTS_FILE])
    estimator = {ESTIMATOR_FILE: b"trees", META_FILE: json.dumps({"run_id": "run-2"}).encode()}
    publish_run(tmp_path, "run-2", estimator, _metrics("run-2"))
    assert sorted(os.listdir(tmp_path)) == sorted([METRICS_FILE, META_FILE, ESTIMATOR_FILE])  # no stale model.npz to load beside it
    assert json.loads((tmp_path / META_FILE).read_text())["run_id"] == json.loads((tmp_path / METRICS_FILE).read_text())["flow_run_id"]


def test_a_live_runs_lock_refuses_with_one_line_naming_it_and_a_dead_runs_is_taken_over(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(run_files, "LOCK_WAIT", 0.3)
    held = {"run": "other-run", "host": socket.gethostname(), "pid": os.getppid(), "since": time.time()}
    (tmp_path / LOCK_FILE).write_text(json.dumps(held))
    with pytest.raises(PipelineError) as caught:
        publish_run(tmp_path, "run-1", _objects("run-1", with_counts=False), _metrics("run-1"))
    assert (
        str(caught.value)
        == f"{tmp_path}: run other-run is writing its files here; not written (delete {tmp_path / LOCK_FILE} if that run is gone)"
    )
    assert os.listdir(tmp_path) == [LOCK_FILE]
    dead = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    (tmp_path / LOCK_FILE).write_text(json.dumps({**held, "pid": dead.pid}))
    publish_run(tmp_path, "run-1", _objects("run-1", with_counts=False), _metrics("run-1"))
    assert sorted(os.listdir(tmp_path)) == sorted([METRICS_FILE, META_FILE, WEIGHTS_FILE])


def _write_runs(folder: str, writer: int, runs: int) -> None:
    for n in range(runs):
        run = f"w{writer}-{n}"
        publish_run(folder, run, _objects(run, with_counts=writer == 1), _metrics(run))


def test_two_processes_writing_one_folder_both_finish_and_leave_one_runs_whole_set(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_runs, args=(str(tmp_path), w, 10)) for w in (1, 2)]
    for process in writers:
        process.start()
    loads = mixes = 0
    while any(p.is_alive() for p in writers):
        try:
            model = load_model(tmp_path)
        except PipelineError as exc:  # between two runs there is no model, or a data file newer than its model.json
            mixes += "another run replaced" in str(exc)
            continue
        loads += 1
        assert model.weights.intercept == float(model.metadata["run_id"].split("-")[-1])  # weights of the run model.json names
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    last = json.loads((tmp_path / METRICS_FILE).read_text())["flow_run_id"]
    assert load_model(tmp_path).metadata["run_id"] == last
    expected = [METRICS_FILE, META_FILE, WEIGHTS_FILE] + ([COUNTS_FILE] if last.startswith("w1") else [])
    assert sorted(os.listdir(tmp_path)) == sorted(expected)
    assert loads > 0, (loads, mixes)


def test_a_data_file_of_another_run_is_refused_and_a_folder_from_before_digests_still_loads(tmp_path: Path) -> None:
    publish_run(tmp_path / "a", "run-1", _objects("run-1", with_counts=False), _metrics("run-1"))
    publish_run(tmp_path / "b", "run-2", _objects("run-2", with_counts=False), _metrics("run-2"))
    (tmp_path / "b" / WEIGHTS_FILE).replace(tmp_path / "a" / WEIGHTS_FILE)  # run-2's weights under run-1's model.json
    with pytest.raises(PipelineError) as caught:
        load_model(tmp_path / "a")
    assert (
        str(caught.value)
        == f"{tmp_path / 'a' / WEIGHTS_FILE}: not the file {META_FILE} describes (another run replaced the folder meanwhile?)"
    )
    meta = json.loads((tmp_path / "a" / META_FILE).read_text())
    del meta["files"], meta["run_id"]  # as the previous version wrote model.json
    (tmp_path / "a" / META_FILE).write_text(json.dumps(meta))
    assert load_model(tmp_path / "a").weights.intercept == 2.0
