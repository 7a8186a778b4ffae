"""The local stack's record, and how a command talks to it: standard library only, so a command asks in milliseconds.

``taxi-pipeline up`` starts one long-lived process (:mod:`pipeline.runtime.stack_process`)
holding a Prefect API, a LocalCluster and a warm flow runner, and records it in
``$PREFECT_HOME/taxi-pipeline-stack.json`` (``PREFECT_HOME`` from the environment,
else ``~/.prefect``). A run may use it only if it would behave exactly as a run
of its own: the same code (:func:`code_fingerprint`: every module file of the
package, and the versions workers must share) and the same environment
(:func:`environment_digest`: the variables that steer storage, credentials,
Prefect, Dask and MLflow, since the stack's workers keep the environment they
started with).

The stack's relay (:mod:`pipeline.runtime.stack_relay`) listens on a Unix socket beside
the record, usable by its owner only: :func:`relay` hands it a command line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from pipeline.edge.atomic import atomic_path
from pipeline.edge.processes import alive

RECORD = "taxi-pipeline-stack.json"
#: The stack's Prefect API and UI port on 127.0.0.1 unless `up --port` says otherwise (Prefect's own default).
DEFAULT_PORT = 4200
#: Packages whose versions a run and the stack's workers must share.
MATCHED = ("prefect", "prefect-dask", "dask", "distributed", "numpy", "pyarrow", "pandas", "scikit-learn")
#: Variables that change what a run reads, writes or reports to (the stack's workers keep theirs from `up`).
STEERING = ("AWS_", "TAXI_PIPELINE_", "PREFECT_", "DASK_", "MLFLOW_", "FSSPEC_", "GOOGLE_", "AZURE_", "HTTP_PROXY", "HTTPS_PROXY")
#: Set per run or per process, so never compared.
_UNSTEERING = frozenset({"PREFECT_API_URL", "PREFECT_HOME", "PREFECT_LOGGING_SETTINGS_PATH"})


@dataclass(frozen=True)
class Stack:
    """A running stack, as its record says."""

    pid: int
    api_url: str
    scheduler: str
    workers: int
    threads: int
    code: str
    environment: str
    socket: str
    started: str
    log: str

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def describe(self) -> list[str]:
        threads = "thread" if self.threads == 1 else "threads"
        return [
            f"Prefect API: {self.api_url} (UI: {self.ui_url})",
            f"Dask scheduler: {self.scheduler} ({self.workers} workers, {self.threads} {threads} in all)",
            f"started {self.started} (pid {self.pid}); log: {self.log}",
        ]

    def mismatch(self) -> str | None:
        """Why this process's runs must not use the stack (other code or environment), or ``None``."""
        restart = "restart it: taxi-pipeline down && taxi-pipeline up"
        if self.code != code_fingerprint():
            return f"it runs other code than this run (files or package versions changed since it started); {restart}"
        if self.environment != environment_digest(os.environ):
            return f"it started with other settings (AWS_*, TAXI_PIPELINE_*, PREFECT_*, DASK_*, MLFLOW_* variables); {restart}"
        return None


def home() -> Path:
    """``PREFECT_HOME``, else Prefect's default ``~/.prefect``: a stack belongs to that home's database."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def record_path() -> Path:
    return home() / RECORD


def module_files() -> list[tuple[Path, Path]]:
    """Every module file of ``pipeline`` and ``pipeline.cluster``, each with the folder its name is relative to.

    ``pipeline.cluster`` is a link to the top-level ``cluster/`` folder, which walking ``pipeline`` does not follow.
    """
    files = []
    for package in ("pipeline", "pipeline.cluster"):  # found, not imported: importing the cluster package loads Dask
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, f"{package} is this project's package"
        root = Path(next(iter(spec.submodule_search_locations)))
        files += [(path, root.parent) for path in sorted(root.rglob("*.py"))]
    return files


def code_fingerprint() -> str:
    """Every module file's path, size and mtime (:func:`module_files`), the interpreter and the matched versions."""
    digest = hashlib.sha256(sys.executable.encode())
    for path, base in module_files():
        stat = path.stat()
        digest.update(f"{path.relative_to(base)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    digest.update(" ".join(f"{name}={version(name)}" for name in MATCHED).encode())
    return digest.hexdigest()[:16]


def environment_digest(environ: Mapping[str, str]) -> str:
    """A digest of the steering variables (names and values; the values never leave it)."""
    steering = sorted((k, v) for k, v in environ.items() if k.startswith(STEERING) and k not in _UNSTEERING)
    return hashlib.sha256(json.dumps(steering).encode()).hexdigest()[:16]


def current() -> Stack | None:
    """The recorded stack if its process is alive; a record left by a dead one (or unreadable) is removed."""
    path = record_path()
    try:
        stack = Stack(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None
    if not alive(stack.pid):
        path.unlink(missing_ok=True)
        return None
    return stack


def write(stack: Stack) -> None:
    """Record ``stack`` whole (a temporary file renamed into place)."""
    with atomic_path(record_path()) as staged:
        staged.write_text(json.dumps(asdict(stack), indent=2))


#: Commands a stack runs for a client: the runs. The others are quicker here than the hand-over.
RELAYED = frozenset({"train", "predict", "retrain", "demo"})


def relay(argv: list[str]) -> int | None:
    """Run ``taxi-pipeline ARGV`` in a process forked from the stack's warm one; its exit code, or ``None`` to run here.

    The fork gets this process's terminal (standard input, output and error, passed over the socket),
    folder, umask and environment, so it prints and exits as this process would; Ctrl-C here is passed
    on to it. ``None`` when the command is not a run, no stack is up, or the stack would not behave as
    this process (other code, settings or Prefect API); the run here then says why, if a stack is up.
    """
    if not argv or argv[0] not in RELAYED or "--help" in argv:
        return None
    stack = current()
    if stack is None or stack.mismatch() or os.environ.get("PREFECT_API_URL", stack.api_url).rstrip("/") != stack.api_url:
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(stack.socket)
    except OSError:
        connection.close()
        return None
    umask = os.umask(0)
    os.umask(umask)
    request = {"argv": argv, "cwd": os.getcwd(), "umask": umask, "environ": dict(os.environ)}
    with connection, connection.makefile("r", encoding="utf-8") as answers:
        socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
        started = answers.readline()
        if not started:
            return None  # it could not fork: run here
        child = int(json.loads(started)["pid"])
        forward = signal.signal(signal.SIGINT, lambda *_: os.kill(child, signal.SIGINT))
        try:
            ended = answers.readline()
        finally:
            signal.signal(signal.SIGINT, forward)
    if not ended:
        print(f"error: the run (pid {child}) on the local stack ended without an exit code; see {stack.log}", file=sys.stderr)
        return 1
    return int(json.loads(ended)["exit"])
