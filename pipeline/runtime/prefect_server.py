"""A Prefect API server in a child process on 127.0.0.1, started without importing the server here.

Prefect's ``SubprocessASGIServer`` is reached through ``prefect.server.api.server``,
whose import (FastAPI app, SQLAlchemy models, migrations) costs ~3 s of CPU in the
*client* process, only to launch a child that imports it all again; on 2 cores
that import also slows the LocalCluster starting beside it. Here the child is
launched the same way (uvicorn on Prefect's app factory) from this process's
settings, and the client only polls ``/health``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline.edge.ports import free_port, port_is_free
from pipeline.errors import PipelineError


def _settings_environment() -> dict[str, str]:
    """This process's Prefect settings as environment variables, so the server uses the same home and database."""
    from prefect.settings import get_current_settings

    return get_current_settings().to_environment_variables(exclude_unset=True)


@dataclass
class ServerProcess:
    """A Prefect API server we started; :meth:`stop` ends it (and removes a ``temporary`` server's log)."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path | None = None
    temporary: bool = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait_healthy(self, timeout: float) -> None:
        """Return once ``/health`` answers 200; one line naming the log if the server dies or never answers."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while True:
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    where = f"; its log: {self.log}" if self.log else ""
                    exited = self.process.poll() is not None
                    what = f"exited with code {self.process.returncode}" if exited else f"did not answer within {timeout:g} s"
                    self._end()  # the log stays: it says why
                    raise PipelineError(f"Prefect API on 127.0.0.1:{self.port} {what}{where}")
                time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """Terminate the server (kill it after ``timeout`` s); stopping again does nothing."""
        self._end(timeout)
        if self.temporary and self.log is not None:
            self.log.unlink(missing_ok=True)

    def _end(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


#: uvicorn's exit code when the app's start-up failed, and how many starts a temporary API gets.
_STARTUP_FAILED, _STARTS = 3, 5


def start_temporary(timeout: float = 180) -> ServerProcess:
    """The run's own API, as Prefect's temporary server is: ephemeral mode, no UI, on a free port.

    A start that fails (uvicorn's exit code 3: the port taken meanwhile, or SQLite locked while another
    run creates the same new database) is tried again on another port, as Prefect's server does.
    """
    import prefect

    port = free_port()
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **_settings_environment(),
    }
    args = ["-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent), "--factory", "prefect.server.api.server:create_app"]
    args += ["--host", "127.0.0.1", "--log-level", "error", "--lifespan", "on"]
    deadline, starts = time.monotonic() + timeout, 0
    while True:
        log = _temporary_log()
        with open(log, "ab") as out:
            process = subprocess.Popen([sys.executable, *args, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
        server = ServerProcess(process, port, log, temporary=True)
        starts += 1
        try:
            server.wait_healthy(max(1.0, deadline - time.monotonic()))
            return server
        except PipelineError:
            if server.process.returncode != _STARTUP_FAILED or starts == _STARTS:
                raise
            server.stop()
        port = free_port()


def _temporary_log() -> Path:
    """Where a temporary API writes: not the terminal, where its shutdown (cancelled services'
    tracebacks when a run is stopped mid-flush) would follow the run's last line."""
    fd, name = tempfile.mkstemp(prefix="taxi-pipeline-api-", suffix=".log")
    os.close(fd)
    return Path(name)


def start_lasting(port: int, log: Path, timeout: float = 90) -> ServerProcess:
    """``prefect server start`` on 127.0.0.1:``port`` (UI, scheduler and every service), its output in ``log``."""
    if not port_is_free(port):
        raise PipelineError(f"--port {port}: 127.0.0.1:{port} is in use (a Prefect server already running?); pass another --port")
    env = {**os.environ, **_settings_environment(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    args = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(process, port, log)
    server.wait_healthy(timeout)
    return server
