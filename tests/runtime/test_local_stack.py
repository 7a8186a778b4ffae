"""``taxi-pipeline up``/``down``: runs on the local stack give the same results, go to its API, and stop on Ctrl-C.

One stack for the module (a real ``prefect server start`` and LocalCluster on
127.0.0.1, in a throwaway ``PREFECT_HOME``), started and stopped by the commands
a user types. The environment names no other Prefect API, as a user's shell.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.edge.ports import free_port
from pipeline.edge.processes import alive
from pipeline.runtime import stack_record
from tests.cli.test_cli import _one_error_line
from tests.conftest import month_model
from tests.runtime.test_interrupt import _Run, _states, assert_stopped_mid_run

pytestmark = [pytest.mark.slow, pytest.mark.prefect_api, pytest.mark.cluster]

ON_STACK = "(the local stack from `taxi-pipeline up`"


def _flat(text: str) -> str:
    """Rich wraps lines at 80 columns off a terminal."""
    return " ".join(text.split())


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300, env=env)


def _train(source: Path, output: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["--source", str(source), "--train-months", "2023-01:2023-02", "--val-month", "2023-03", "--output", str(output)]
    return _run("train", *args, "--folds", "3", "--alphas", "0.1,1", *extra, env=env)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], stack_record.Stack]]:
    """``taxi-pipeline up`` on a free port with 2 workers; ``down`` after (if a test has not)."""
    home = tmp_path_factory.mktemp("stack-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    started = _run("up", "--port", str(free_port()), "--n-workers", "2", env=env)
    assert started.returncode == 0, started.stderr + started.stdout
    record = stack_record.Stack(**json.loads((home / stack_record.RECORD).read_text()))
    try:
        yield env, record
    finally:
        _run("down", env=env)


def test_up_says_where_the_stack_is_and_status_agrees(stack):
    env, record = stack
    assert record.api_url.startswith("http://127.0.0.1:") and record.scheduler.startswith("tcp://127.0.0.1:")
    assert record.workers == 2
    status = _run("status", env=env)
    assert status.returncode == 0
    assert f"Prefect API: {record.api_url} (UI: {record.ui_url})" in status.stdout
    again = _run("up", env=env)
    assert again.returncode == 0 and "already up" in again.stdout


def test_a_run_on_the_stack_equals_a_run_of_its_own_and_is_recorded_in_its_api(stack, months_dir, tmp_path):
    env, record = stack
    on_stack = _train(months_dir, tmp_path / "stack", env)
    assert on_stack.returncode == 0, on_stack.stderr
    assert f"Prefect API: {record.api_url} {ON_STACK}" in _flat(on_stack.stderr)
    # other settings than the stack started with: this run starts its own API and cluster, and says why
    own = _train(months_dir, tmp_path / "own", {**env, "TAXI_PIPELINE_STATS_CACHE_MAX_BYTES": "1GB"})
    assert own.returncode == 0, own.stderr
    assert "it started with other settings" in _flat(own.stderr) and ON_STACK not in _flat(own.stderr)
    mine, theirs = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("stack", "own"))
    for key in ("train_rows", "val_rows", "train_rmse", "val_rmse", "alpha"):
        assert mine[key] == theirs[key], key
    assert [score["rmse"] for score in mine["cv"]["scores"]] == [score["rmse"] for score in theirs["cv"]["scores"]]
    assert _states(record.api_url, [mine["flow_run_id"]]) == ["COMPLETED"]


def test_bad_input_on_the_stack_is_one_line_and_writes_nothing(stack, months_dir, tmp_path):
    env, _ = stack
    empty = tmp_path / "no-months"
    empty.mkdir()
    line = _one_error_line(_train(empty, tmp_path / "out", env))
    assert "2023-01" in line and str(empty) in line
    assert not (tmp_path / "out").exists()


def test_predict_uses_the_stack(stack, months_dir, tmp_path):
    env, _ = stack
    scored = _run(
        "predict",
        "--model",
        str(month_model(months_dir, tmp_path / "model")),  # a model to score with; the run under test is predict's
        "--source",
        str(months_dir),
        "--months",
        "2023-03",
        "--output",
        str(tmp_path / "scored"),
        env=env,
    )
    assert scored.returncode == 0, scored.stderr
    assert ON_STACK in _flat(scored.stderr)
    assert (tmp_path / "scored" / "report.json").exists()


def test_ctrl_c_on_the_stack_stops_the_run_and_leaves_the_stack_usable(stack, slow_months, months_dir, tmp_path):
    env, record = stack
    assert_stopped_mid_run(_Run(slow_months, tmp_path / "out", env, cluster=()), tmp_path / "out", record.api_url)
    after_it = _train(months_dir, tmp_path / "next", env)
    assert after_it.returncode == 0 and ON_STACK in _flat(after_it.stderr), after_it.stderr


def test_down_stops_every_process_and_frees_the_port(stack):
    env, record = stack
    stopped = _run("down", env=env)
    assert stopped.returncode == 0 and f"stopped the local stack (pid {record.pid})" in stopped.stdout
    assert not alive(record.pid)
    assert not Path(env["PREFECT_HOME"], stack_record.RECORD).exists() and not Path(record.socket).exists()
    port = int(record.api_url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing answers there any more
    status = _run("status", env=env)
    assert status.returncode == 1 and "no local stack is up" in status.stdout
    assert _run("down", env=env).stdout.strip() == "no local stack is up"


def test_up_on_a_port_in_use_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_error_line(_run("up", "--port", str(port), env=env))
    assert f"--port {port}" in line and "in use" in line
    assert not (tmp_path / "home" / stack_record.RECORD).exists()


_UP_ON_AN_UNKNOWN_PREFECT = """
import sys
import prefect
prefect.__version__ = "9.9.9"  # a release the workarounds were not read from
from pipeline.cli import main
sys.argv = ["taxi-pipeline", "up", "--port", sys.argv[1]]
main(relay=False)
"""


def test_up_on_a_prefect_the_workarounds_do_not_know_is_refused_in_one_line(tmp_path):
    from pipeline.runtime import prefect_patches

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    result = subprocess.run([sys.executable, "-c", _UP_ON_AN_UNKNOWN_PREFECT, "1"], capture_output=True, text=True, env=env, timeout=120)
    line = _one_error_line(result)
    assert line.startswith(f"error: prefect 9.9.9 is not a release taxi-pipeline's Prefect workarounds know ({prefect_patches.known()})")
    assert result.stderr.strip() == line  # nothing else: not the "starting" line, no warning
    assert not (tmp_path / "home" / stack_record.RECORD).exists()  # nothing started


def test_a_record_left_by_a_dead_stack_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = stack_record.Stack(int(finished.stdout), "http://127.0.0.1:1/api", "tcp://127.0.0.1:2", 1, 1, "c", "e", "s", "t", "l")
    stack_record.write(dead)
    assert stack_record.record_path().exists()
    assert stack_record.current() is None
    assert not stack_record.record_path().exists()


def test_the_stacks_code_fingerprint_covers_the_cluster_package_behind_its_link():
    """A stack started before an edit of cluster/ must not serve runs after it: its files are in the fingerprint."""
    names = {str(path.relative_to(base)) for path, base in stack_record.module_files()}
    assert {"pipeline/run.py", "cluster/connect.py", "cluster/spec.py"} <= names
    assert not any(name.startswith("pipeline/cluster/") for name in names)  # the link is not walked twice
