"""Test support shipped with the package: the service in a real uvicorn process on 127.0.0.1.

``tests/`` and ``benchmarks/`` both start one; it lives here (as
:mod:`pipeline.runtime.testing` does for the Prefect API) so there is one
copy of how it is brought up and taken down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.edge.ports import free_port
from pipeline.service.source import ModelSource

#: What the child runs: ``serve`` itself, as ``taxi-pipeline serve`` will.
_LAUNCH = """
import sys
from pipeline.service.app import ModelSource, serve
kind, location, port, max_batch, poll_seconds, access_log = sys.argv[1:]
serve(ModelSource(kind, location), port=int(port), max_batch=int(max_batch), poll_seconds=float(poll_seconds), access_log=access_log == "1")
"""


@contextmanager
def running_service(
    source: ModelSource,
    log: Path,
    max_batch: int = 10_000,
    poll_seconds: float = 1.0,
    access_log: bool = True,
    timeout: float = 60.0,
) -> Iterator[str]:
    """``serve(source)`` in a child process on 127.0.0.1 and a free port; yields its base URL once it answers.

    Its output goes to ``log``; it is stopped with SIGTERM (uvicorn's graceful
    shutdown), then killed if it lingers.
    """
    port = free_port()
    args = [source.kind, source.location, str(port), str(max_batch), str(poll_seconds), "1" if access_log else "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", _LAUNCH, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not _answers(f"{url}/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start ({source}): {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(url: str) -> bool:
    """Whether anything answers HTTP at ``url`` (a 503 of an empty registry counts)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy
    try:
        with direct.open(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
