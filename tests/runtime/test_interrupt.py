"""Ctrl-C in the middle of ``taxi-pipeline train`` or ``predict``: exit 130 within seconds, one line, nothing written, flow runs ended.

The signal goes to the whole process group, as a terminal sends it, so the
run's temporary API and its LocalCluster's workers receive it too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import month_model

INTERRUPTED = "interrupted: the run was stopped (Ctrl-C)"


def _sigint_as_at_a_terminal() -> None:
    """In a test's child, before exec: SIGINT handled and unblocked, as a shell gives a command. Both are inherited, and
    a test process that started servers or the stack's pieces may have left SIGINT ignored or blocked."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class _Run:
    """``taxi-pipeline train`` (or other ``args``) in its own process group, its stderr read line by line with arrival times."""

    def __init__(
        self,
        source: Path,
        output: Path,
        env: dict[str, str],
        cluster: tuple[str, ...] = ("--n-workers", "1"),  # the cluster's size is not under test
        args: list[str] | None = None,
        stdout: Path | None = None,
    ) -> None:
        if args is None:
            args = ["train", "--source", str(source), "--train-months", "2023-01:2023-02", "--val-month", "2023-03"]
            args += ["--output", str(output), "--chunk-rows", "2000", "--no-cache", *cluster]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args],
            env=env,
            stdout=subprocess.DEVNULL if stdout is None else stdout.open("w"),
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_sigint_as_at_a_terminal,
        )
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for_quiet_after(self, text: str, timeout: float = 120.0, quiet: float = 1.0) -> None:
        """Until a line containing ``text`` arrived and stderr then stayed silent for ``quiet`` seconds (tasks are running)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for _, line in self.lines):
            assert time.monotonic() < deadline and self.process.poll() is None, "\n".join(line for _, line in self.lines)
            time.sleep(0.1)
        while time.monotonic() - self.lines[-1][0] < quiet and time.monotonic() < deadline:
            time.sleep(0.1)

    def interrupt(self) -> tuple[int, float, list[str]]:
        """SIGINT to the group; the exit code, seconds to exit and the lines printed after the signal."""
        sent = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        code = self.process.wait(timeout=60)
        took = time.monotonic() - sent
        self.reader.join(timeout=10)
        return code, took, [line for at, line in self.lines if at > sent]

    def flow_run_ids(self) -> list[str]:
        return re.findall(r"/runs/flow-run/([0-9a-f-]{36})", "\n".join(line for _, line in self.lines))


def _states(api_url: str, flow_run_ids: list[str]) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return [client.read_flow_run(run_id).state.type.value for run_id in flow_run_ids]  # type: ignore[union-attr]


def assert_stopped_mid_run(run: _Run, output: Path, api_url: str) -> None:
    """Ctrl-C once training runs: exit 130 within the 30 s grace, one line, nothing written, both flow runs marked ended."""
    run.wait_for_quiet_after("training linear")
    code, took, after = run.interrupt()
    assert code == 130 and after == [INTERRUPTED], "\n".join(after)
    assert took < 30, f"{took:.1f} s to exit"
    assert not output.exists()
    ids = run.flow_run_ids()
    assert len(ids) == 2  # the run and its train-on-dask subflow
    assert set(_states(api_url, ids)) <= {"CRASHED", "CANCELLED"}


@pytest.mark.slow
@pytest.mark.cluster
def test_ctrl_c_stops_a_run_on_a_prefect_server_and_marks_its_flow_runs(slow_months, tmp_path, prefect_server):
    assert_stopped_mid_run(_Run(slow_months, tmp_path / "out", prefect_server.env), tmp_path / "out", prefect_server.url)


@pytest.mark.slow
@pytest.mark.prefect_api
@pytest.mark.cluster
def test_ctrl_c_stops_a_run_on_its_temporary_api(slow_months, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    run = _Run(slow_months, tmp_path / "out", env)
    run.wait_for_quiet_after("training linear")
    code, took, after = run.interrupt()
    assert code == 130 and after == [INTERRUPTED], "\n".join(after)
    assert took < 30, f"{took:.1f} s to exit"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.prefect_api
@pytest.mark.cluster
def test_ctrl_c_just_after_the_flow_finished_leaves_a_completed_run(months_dir, tmp_path):
    """The flow has finished (model and metrics written) and the run is closing its cluster and API: exit 0, results printed."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    run = _Run(months_dir, tmp_path / "out", env, stdout=tmp_path / "stdout")
    deadline = time.monotonic() + 120
    while sum("Finished in state Completed()" in line for _, line in run.lines) < 2:  # the subflow's, then the flow's
        assert time.monotonic() < deadline and run.process.poll() is None, "\n".join(line for _, line in run.lines)
        time.sleep(0.02)
    code, _, after = run.interrupt()
    assert code == 0 and INTERRUPTED not in after, "\n".join(after)
    assert "model and metrics in" in (tmp_path / "stdout").read_text()
    assert (tmp_path / "out" / "metrics.json").is_file()


def _stop_a_scoring_run(source: Path, tmp_path: Path, env: dict[str, str], later: float = 0.0) -> _Run:
    """Ctrl-C once its chunks run (``later`` s after): exit 130 within the 30 s grace, one line, no month published and no staging left."""
    output = tmp_path / "scored"
    model = month_model(source, tmp_path / "model")
    args = ["predict", "--model", str(model), "--source", str(source), "--months", "2023-01:2023-03", "--output", str(output)]
    run = _Run(source, output, env, args=[*args, "--chunk-rows", "2000", "--n-workers", "1"])
    run.wait_for_quiet_after("Beginning subflow run")
    time.sleep(later)
    code, took, after = run.interrupt()
    assert code == 130 and after == [INTERRUPTED], "\n".join(after)
    assert took < 30, f"{took:.1f} s to exit"
    assert not output.exists() or not list(output.iterdir())
    return run


@pytest.mark.slow
@pytest.mark.cluster
def test_ctrl_c_stops_a_scoring_run_and_replaces_no_month(slow_months, tmp_path, prefect_server):
    """Mid-run, parts of some chunks are staged: none is published, the staging is gone, both flow runs end."""
    run = _stop_a_scoring_run(slow_months, tmp_path, prefect_server.env)
    ids = run.flow_run_ids()
    assert len(ids) == 2  # the run and its score-on-dask subflow
    assert set(_states(prefect_server.url, ids)) <= {"CRASHED", "CANCELLED"}


@pytest.mark.slow
@pytest.mark.prefect_api
@pytest.mark.cluster
def test_ctrl_c_stops_a_scoring_run_on_its_temporary_api_and_only_its_line_is_printed(slow_months, tmp_path):
    """The temporary API stops with the run; what it logs then (services cancelled mid-flush) goes to its own log.

    Later in the run than the other tests stop it: with task runs completing every few ms, the API's
    recorder is then busy, and its shutdown printed a traceback of cancelled flushes.
    """
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "prefect-home")}
    _stop_a_scoring_run(slow_months, tmp_path, env, later=5.0)


_SWALLOWED = """
import gc, logging, signal, time
from pipeline.runtime.interrupts import Interrupted, interruptible

fired, said, outcome = [], [], "not raised"

def callback(phase, info):
    if phase == "start" and not fired:
        fired.append(phase)
        signal.raise_signal(signal.SIGINT)  # its handler runs here, inside the callback
        sum(range(1000))

gc.callbacks.append(callback)
try:
    with interruptible(said.append, grace=60):
        gc.collect()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the interrupt raised again lands in plain code, here
            time.sleep(0.01)
except Interrupted:
    outcome = "raised"
finally:
    gc.callbacks.remove(callback)
    logging.disable(logging.NOTSET)
print(outcome, fired, said, signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_an_interrupt_swallowed_by_a_gc_callback_is_raised_again():
    """Python prints an exception raised in a GC callback as "ignored" and carries on; the run must not.

    In a fresh process, as the CLI's: a test process holds other tests' threads, whose own collections
    would call the callback outside the main thread.
    """
    result = subprocess.run(
        [sys.executable, "-c", _SWALLOWED], capture_output=True, text=True, timeout=60, preexec_fn=_sigint_as_at_a_terminal
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "raised ['start'] [] True", result.stdout + result.stderr


_WRAPPED = """
import signal
from pydantic import BaseModel, field_serializer
from pipeline.runtime.interrupts import Interrupted, interrupt_wins, interruptible

class Context(BaseModel):
    x: int

    @field_serializer("x")
    def _x(self, value: int) -> int:
        signal.raise_signal(signal.SIGINT)  # its handler runs here, inside pydantic-core's serializer
        return value

seen = []
try:
    with interruptible(print, grace=60):
        try:
            with interrupt_wins():
                Context(x=1).model_dump()
        except BaseException as exc:
            seen.append(type(exc).__name__ + "<-" + type(exc.__cause__).__name__)
            raise
except Interrupted:
    seen.append("out")
try:
    with interrupt_wins():
        raise ValueError("not after a Ctrl-C")
except ValueError:
    pass
print(seen)
"""


def test_an_interrupt_wrapped_by_a_c_extension_leaves_the_flow_as_the_interrupt():
    """Prefect records a flow run Crashed only if its body ends in a BaseException; pydantic-core wraps the
    interrupt raised inside its serializer (a task's submission) in an ordinary exception. In a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", _WRAPPED], capture_output=True, text=True, timeout=60, preexec_fn=_sigint_as_at_a_terminal
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "['Interrupted<-PydanticSerializationError', 'out']", result.stdout + result.stderr


_AFTER_COMPLETION = """
import signal, time
from pipeline.runtime.interrupts import Interrupted, completed, interruptible

said, outcome = [], []
for finish in (False, True):
    try:
        with interruptible(said.append, grace=60):
            if finish:
                completed()  # the flow returned: its files are in place
            signal.raise_signal(signal.SIGINT)  # a Ctrl-C while the cluster and API close
            time.sleep(0.05)
            outcome.append("printed results")
        outcome.append("exit 0")
    except Interrupted:
        outcome.append("exit 130")
print(outcome, said)
"""


def test_a_ctrl_c_after_the_run_completed_is_ignored_and_one_before_prints_no_results():
    """Ctrl-C a second after the flow finished printed the results, then exited 130 with the files in place.
    In a fresh process, as the CLI's: the signal handler belongs to the main thread."""
    result = subprocess.run(
        [sys.executable, "-c", _AFTER_COMPLETION], capture_output=True, text=True, timeout=60, preexec_fn=_sigint_as_at_a_terminal
    )
    assert result.returncode == 0, result.stderr
    outcome, said = result.stdout.strip().splitlines()[-1].split("] [")
    assert outcome == "['exit 130', 'printed results', 'exit 0'", result.stdout + result.stderr
    assert said == "'the run has completed; closing its cluster and API (Ctrl-C is ignored now)']"
