"""Test support shipped with the package: a real Prefect API on a throwaway database, and a served deployment.

``tests/`` and ``benchmarks/`` both need them; they live here (as ``prefect.testing``
does in Prefect) so there is one copy of how they are brought up and measured.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.edge.ports import free_port
from pipeline.edge.processes import Footprint, descendants, footprint
from pipeline.errors import PipelineError
from pipeline.runtime.prefect_server import ServerProcess


@contextmanager
def temporary_prefect_api(home: Path) -> Iterator[str]:
    """Start a Prefect API on 127.0.0.1 with ``PREFECT_HOME=home``; export its URL; stop it after."""
    from prefect.settings import PREFECT_HOME, temporary_settings

    from pipeline.runtime.prefect_api import prefect_api

    previous = {key: os.environ.get(key) for key in ("PREFECT_HOME", "PREFECT_API_URL")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    try:
        with temporary_settings(updates={PREFECT_HOME: str(home)}), prefect_api() as url:
            yield url
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class PrefectServer:
    """``prefect server start`` on 127.0.0.1 with a throwaway PREFECT_HOME; ``env`` is what its clients need.

    The port is the OS's pick of a free one, which another process may take before the server binds it (a fresh
    clone's suite once lost a session's server so): a start refused for a port in use is tried again on another.
    """

    #: Starts tried before giving up, each on a fresh port.
    STARTS = 3

    def __init__(self, folder: Path) -> None:
        # no other API or scheduler address; Dask's own settings (the tests' quieter upkeep) reach the runs it serves
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_")) or k.startswith("DASK_DISTRIBUTED__")}
        self.env.update(PREFECT_HOME=str(folder / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        for start in range(1, self.STARTS + 1):
            self.log = folder / f"server-{start}.log"
            try:
                self._start(free_port())
                return
            except PipelineError as exc:
                said = self.log.read_text()[-2000:]
                if "is already in use" not in said or start == self.STARTS:
                    raise RuntimeError(f"prefect server did not start ({exc}): {said}") from None

    def _start(self, port: int) -> None:
        """``prefect server start`` on ``port``, once it answers; PipelineError (the process ended) when it exits first
        or does not answer within 90 s."""
        self.url = f"http://127.0.0.1:{port}/api"
        self.env["PREFECT_API_URL"] = self.url
        prefect = str(Path(sys.executable).with_name("prefect"))
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        ServerProcess(self.process, port, self.log).wait_healthy(90)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


#: The flow a served deployment runs: its deployments are named FLOW/NAME.
RETRAIN_FLOW = "retrain-trip-duration"


@dataclass(frozen=True)
class RunSample:
    """A served deployment's flow run once it ended, and the serving process's footprint with no run in progress."""

    flow_run: Any  # prefect.client.schemas.objects.FlowRun
    footprint: Footprint


@dataclass
class ServedDeployment:
    """``taxi-pipeline deploy`` running in a subprocess with its own TMPDIR (so its temporary files can be counted)."""

    process: subprocess.Popen[bytes]
    name: str
    temp_dir: Path
    log: Path

    @property
    def output(self) -> str:
        """What it printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")

    def flow_runs(self, client: Any) -> list[Any]:
        """This deployment's flow runs, in the order they were scheduled."""
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
        from prefect.client.schemas.sorting import FlowRunSort

        deployment = client.read_deployment_by_name(f"{RETRAIN_FLOW}/{self.name}")
        found = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        return list(client.read_flow_runs(deployment_filter=found, sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200))

    def samples(self, client: Any, runs: int, timeout: float) -> list[RunSample]:
        """Wait for ``runs`` flow runs to end; after each, measure the footprint at the first moment no run is in progress.

        Runs follow each other at the runner's poll: if the next one started before the process was seen idle, the
        sample waits for the next idle moment and stands for both runs (fewer samples than runs, never a busy one).
        """
        deadline = time.monotonic() + timeout
        ended: dict[str, Any] = {}
        taken: list[RunSample] = []
        while len(ended) < runs:
            if self.process.poll() is not None:
                raise RuntimeError(f"deploy exited {self.process.returncode}: {self.output[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ended)} of {runs} runs ended in {timeout:.0f} s: {self.output[-3000:]}")
            if not _run_in_progress(self.process.pid):
                new = [r for r in self.flow_runs(client) if r.state and r.state.is_final() and str(r.id) not in ended]
                now = footprint(self.process.pid, self.temp_dir)
                if new and not _run_in_progress(self.process.pid):  # still idle: nothing of a next run is in ``now``
                    ended.update((str(r.id), r) for r in new)
                    taken.append(RunSample(new[-1], now))
            time.sleep(0.2)
        return taken

    def drain(self, client: Any, timeout: float) -> None:
        """Pause the deployment (the server deletes its scheduled runs) and wait for the run in progress to end: a stop
        after this cancels nothing."""
        client.pause_deployment(client.read_deployment_by_name(f"{RETRAIN_FLOW}/{self.name}").id)
        deadline = time.monotonic() + timeout
        while _run_in_progress(self.process.pid) or any(r.state.is_running() or r.state.is_pending() for r in self.flow_runs(client)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"a run was still in progress {timeout:.0f} s after pausing: {self.output[-3000:]}")
            time.sleep(0.5)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (a service manager's stop); its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def _run_in_progress(pid: int) -> bool:
    """A process of a run is up under the serving process ``pid``: any descendant but multiprocessing's resource tracker,
    which the runner's first spawned run starts and which stays for the runner's life."""
    for child in descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing.resource_tracker" not in command:
            return True
    return False


@contextmanager
def served_deployment(folder: Path, name: str, args: Sequence[str], env: dict[str, str], timeout: float = 90) -> Iterator[ServedDeployment]:
    """Serve ``deploy --name NAME ARGS`` against ``env``'s PREFECT_API_URL until its deployment is registered; killed after
    if the block did not stop it. Its output goes to ``folder/deploy.log``, its temporary files to ``folder/tmp``."""
    from prefect.client.orchestration import SyncPrefectClient

    temp_dir, log = folder / "tmp", folder / "deploy.log"
    temp_dir.mkdir(parents=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "deploy", "--name", name, *args],
            env={**env, "TMPDIR": str(temp_dir)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = ServedDeployment(process, name, temp_dir, log)
    try:
        deadline = time.monotonic() + timeout
        with SyncPrefectClient(env["PREFECT_API_URL"]) as client:
            while True:
                try:
                    client.read_deployment_by_name(f"{RETRAIN_FLOW}/{name}")
                    break
                except Exception:  # ObjectNotFound until the runner has registered it
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError(f"{RETRAIN_FLOW}/{name} was not registered: {served.output[-3000:]}") from None
                    time.sleep(0.5)
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
