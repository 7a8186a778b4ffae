"""``taxi-pipeline up``/``down``, and the choice each run makes between the local stack and services of its own.

Without a stack every run starts its own Prefect API and LocalCluster and stops
them at the end: seconds of start-up per run, and a UI that is gone when the run
is. ``up`` starts one detached process (:mod:`pipeline.runtime.stack_process`) holding
``prefect server start`` on 127.0.0.1 (UI and all services, on the database in
``PREFECT_HOME``), a LocalCluster whose workers report to it with the flows'
modules imported, and a relay that forks warm ``taxi-pipeline`` processes for runs; ``down`` stops it.

:func:`run_services` is how ``train``, ``retrain`` and ``predict`` choose. A
run uses the stack when it is up and answers, the run would behave the same
there (:meth:`Stack.mismatch <pipeline.runtime.stack_record.Stack.mismatch>`:
same code, same steering environment), it asks for no cluster of its own and
``PREFECT_API_URL`` names no other API. Otherwise the run brings up its own API
and LocalCluster as before, and says why when a stack was up. Either way one
run reports to one API.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from pipeline.cluster import ClusterSpec, resolve
from pipeline.edge.processes import alive
from pipeline.errors import PipelineError
from pipeline.runtime import prefect_patches, stack_record
from pipeline.runtime.api_watch import check_answers, quiet_resource_tracker, watched_api
from pipeline.runtime.cluster_runner import early_cluster
from pipeline.runtime.prefect_api import TEMPORARY_NOTE, configured_api_url, prefect_api
from pipeline.runtime.stack_record import Stack

ORIGIN = "the local stack from `taxi-pipeline up`"


def _answers(stack: Stack) -> bool:
    """Its API is healthy and its scheduler accepts connections (a second at most)."""
    host, _, port = stack.scheduler.partition("://")[2].rpartition(":")
    try:
        with httpx.Client(timeout=1) as client:
            if client.get(f"{stack.api_url}/health").status_code != 200:
                return False
        socket.create_connection((host, int(port)), timeout=1).close()
    except (httpx.HTTPError, OSError, ValueError):
        return False
    return True


def usable(spec: ClusterSpec) -> tuple[Stack | None, str | None]:
    """The stack this run may use, or ``None`` and why not (``None`` too when no stack is up)."""
    stack = stack_record.current()
    if stack is None:
        return None, None
    skip = f"{ORIGIN} is up, but "
    configured = configured_api_url()
    if configured and configured.rstrip("/") != stack.api_url:
        return None, f"{skip}PREFECT_API_URL names another API ({configured}): this run uses that one and its own cluster"
    if spec != ClusterSpec() or resolve(spec).origin != "LocalCluster":
        return None, f"{skip}this run asks for a cluster of its own (cluster flags or a configured scheduler)"
    why = stack.mismatch()
    if why:
        return None, f"{skip}{why}"
    if not _answers(stack):
        return None, f"{skip}it does not answer (see {stack.log}); this run starts its own API and cluster"
    return stack, None


@contextmanager
def run_services(spec: ClusterSpec, announce: Callable[[str], None], flow_module: str) -> Iterator[ClusterSpec]:
    """The run's Prefect API (exported) and the cluster its flow connects to: the local stack's, else the run's own.

    A run of its own starts its LocalCluster in a thread while its API starts (about 2 s of 5 overlap),
    its workers importing ``flow_module`` meanwhile, and closes both at the end; a scheduler address or
    a cluster class is left to the flow.
    """
    stack, why = usable(spec)
    if why:
        announce(why)
    if stack is not None:
        with prefect_api(stack.api_url) as api_url, prefect_patches.installed(), watched_api(api_url):
            announce(f"Prefect API: {api_url} ({ORIGIN}; UI: {stack.ui_url})")
            yield ClusterSpec(stack.scheduler, origin=ORIGIN)
        return
    configured = configured_api_url()
    if configured is not None:
        check_answers(configured)  # before any cluster starts
    temporary = configured is None
    with (
        quiet_resource_tracker(),
        early_cluster(spec, (flow_module,)) as early,
        prefect_api() as api_url,
        prefect_patches.installed(),
        watched_api(api_url),
    ):
        announce(f"Prefect API: {api_url}")
        if temporary:
            announce(TEMPORARY_NOTE)
        try:
            yield early.spec()
        finally:
            early.close()  # before the API stops: workers still report to it while they close


# --- up, down ---------------------------------------------------------------------------------------------


def check_prefect() -> None:
    """Refuse, in one line, a Prefect release the workarounds do not know.

    The stack's workers outlive runs, and only :func:`prefect_patches.point_prefect_at
    <pipeline.runtime.prefect_patches.point_prefect_at>` moves their Prefect services to the next run's API:
    without it a run's task runs go to the API of the run before. A run of its own needs none of that
    (its workers start with its API in their environment), so it only warns.
    """
    version = prefect_patches.unknown_version()
    if version is not None:
        raise PipelineError(
            f"prefect {version} is not a release taxi-pipeline's Prefect workarounds know ({prefect_patches.known()}): "
            "the local stack's reused workers could lose task runs; install a known one (pip install -c constraints.txt -e .) "
            "or run without the stack"
        )


def up(
    port: int = stack_record.DEFAULT_PORT, n_workers: int | None = None, threads_per_worker: int = 1, timeout: float = 180
) -> tuple[Stack, bool]:
    """Start the stack detached (or find it running); return it and whether it was started now."""
    check_prefect()
    running = stack_record.current()
    if running is not None:
        return running, False
    path = stack_record.record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.with_suffix(".log")
    args = [sys.executable, "-m", "pipeline.runtime.stack_process", "--port", str(port), "--threads-per-worker", str(threads_per_worker)]
    if n_workers:
        args += ["--n-workers", str(n_workers)]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(stack_record.home())
    with open(log, "ab") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while (stack := stack_record.current()) is None:
        if process.poll() is not None:
            raise PipelineError(f"the local stack did not start: {_last_line(log)} (log: {log})")
        if time.monotonic() > deadline:
            _stop(process.pid, 30)
            raise PipelineError(f"the local stack did not start within {timeout:g} s (log: {log})")
        time.sleep(0.2)
    return stack, True


def down(timeout: float = 60) -> Stack | None:
    """Stop the running stack (its cluster, then its API); return what was stopped, ``None`` when none was up."""
    stack = stack_record.current()
    if stack is None:
        return None
    _stop(stack.pid, timeout)
    stack_record.record_path().unlink(missing_ok=True)
    return stack


def _stop(pid: int, timeout: float) -> None:
    """SIGTERM the stack's process (it closes its cluster, then its API); after ``timeout`` s SIGKILL its process group."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # what is left of it (nothing, after a clean stop)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect our own child's exit status (``up`` and ``down`` in one process, as in tests), else it stays a zombie."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
