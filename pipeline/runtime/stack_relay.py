"""The local stack's relay: a process with the CLI, Prefect, Dask and the flows imported, forked once per run.

A ``taxi-pipeline train`` process spends ~2.5 s importing Prefect, Dask and the
flows before its run starts, however small the run. The stack pays that once,
here: this process imports everything, then waits on a Unix socket (owner only)
for command lines from :func:`pipeline.runtime.stack_record.relay`. For
each it forks; the child takes over the client's terminal (its standard input,
output and error arrive with the request), folder, umask and environment, and
runs the CLI's own ``main`` on the command line: the same code, the same
output, the same exit code, Ctrl-C handled as in a process of its own (the
client passes it on). It then finds the stack up and runs on its API and
cluster. Forking is safe because this process never starts a thread.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, NoReturn

from pipeline.runtime import api_watch
from pipeline.runtime.terminal_logs import quiet_terminal


def _load() -> None:
    """Everything a run imports, so that a forked child starts at once."""
    from prefect.settings import get_current_settings

    from pipeline.edge import report

    get_current_settings()
    report.prepare()


def _receive(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request line and the three descriptors sent with its first bytes."""
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    while not data.endswith(b"\n"):
        more = connection.recv(1 << 16)
        if not more:
            raise ConnectionError("the client went away mid-request")
        data += more
    return json.loads(data), list(fds)


def _terminal(fds: list[int]) -> None:
    """Standard input, output and error become the client's, and Python's streams are made anew on them."""
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True)


def _child(connection: socket.socket, request: dict[str, Any], fds: list[int]) -> NoReturn:
    """Become the client's ``taxi-pipeline`` process for one command line, then exit with its code."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # this run's own subprocesses are waited for
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _terminal(fds)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["environ"])
    sys.argv = ["taxi-pipeline", *request["argv"]]
    connection.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    api_watch.before_exit(lambda ended: connection.sendall(json.dumps({"exit": ended}).encode() + b"\n"))  # its API went away
    code = 1
    try:
        from pipeline.cli import main

        main(relay=False)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        from pipeline.runtime.prefect_api import drain_services  # here, not at the top: Prefect loads after quiet_terminal

        drain_services()  # the run's last logs and events: os._exit below runs no exit hooks
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        try:
            connection.sendall(json.dumps({"exit": code}).encode() + b"\n")
        finally:
            os._exit(code)


def serve(path: Path) -> None:
    """Listen on ``path`` and fork a child per request, until SIGTERM."""
    _load()
    assert threading.active_count() == 1, "forking needs a process without threads"
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel; each reports its own exit code
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"relay listening on {path}", flush=True)
    while True:
        connection, _ = listener.accept()
        try:
            request, fds = _receive(connection)
        except (OSError, ValueError) as exc:
            print(f"dropped a request: {exc}", flush=True)
            connection.close()
            continue
        if os.fork() == 0:
            listener.close()
            _child(connection, request, fds)
        connection.close()
        for fd in fds:
            os.close(fd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.runtime.stack_relay", description="The relay the local stack starts.")
    parser.add_argument("socket", type=Path)
    args = parser.parse_args(argv)
    with quiet_terminal():  # before Prefect loads: its console then filters as the CLI's does
        serve(args.socket)


if __name__ == "__main__":
    main()
