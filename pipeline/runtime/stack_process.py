"""The process ``taxi-pipeline up`` starts: a Prefect API, a LocalCluster and the relay, until ``down``.

It starts ``prefect server start`` on 127.0.0.1 (UI and every service, on the
database in ``PREFECT_HOME``), a LocalCluster whose workers report to that API
with the flows' modules imported, and :mod:`pipeline.runtime.stack_relay`, which forks
warm ``taxi-pipeline`` processes for runs. Then it records the three
(:mod:`pipeline.runtime.stack_record`); the record exists exactly while
they are all up. SIGTERM (``down``) stops the relay, the cluster, then the API.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.runtime import stack_record


def _start_relay(path: Path, log: Path, stack: ExitStack, timeout: float = 120) -> None:
    """Start the relay (closed with ``stack``) and wait until it listens on ``path``."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its children are as a user's command
    with open(log, "ab") as out:
        relay = subprocess.Popen(
            [sys.executable, "-m", "pipeline.runtime.stack_relay", str(path)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    stack.callback(relay.wait, timeout=30)
    stack.callback(relay.terminate)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if relay.poll() is not None or time.monotonic() > deadline:
            raise PipelineError(f"the relay did not start (exit code {relay.poll()}); see {log}")
        time.sleep(0.05)


def _serve(port: int, n_workers: int | None, threads_per_worker: int) -> None:
    """Bring the API, the cluster and the relay up, record them, and wait for SIGTERM."""
    from pipeline.cluster import ClusterSpec, start_cluster
    from pipeline.runtime import prefect_server
    from pipeline.runtime.cluster_runner import FLOW_MODULES, WORKER_WARM_UP
    from pipeline.runtime.plugins import PrefectApiPlugin

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal that ran `up` is not ours to follow
    path = stack_record.record_path()
    log = path.with_suffix(".log")
    environment = stack_record.environment_digest(os.environ)  # as `up` passed it, before anything here sets a variable
    with ExitStack() as stack:
        server = prefect_server.start_lasting(port, log)
        stack.callback(server.stop)
        spec = ClusterSpec(n_workers=n_workers, threads_per_worker=threads_per_worker)
        cluster = start_cluster(spec, stack, (*FLOW_MODULES, WORKER_WARM_UP), [PrefectApiPlugin(server.api_url)])
        relay = path.with_suffix(".sock")
        _start_relay(relay, log, stack)
        stack.callback(relay.unlink, missing_ok=True)
        workers = cluster.scheduler_info.get("workers", {})
        record = stack_record.Stack(
            pid=os.getpid(),
            api_url=server.api_url,
            scheduler=cluster.scheduler_address,
            workers=len(workers),
            threads=sum(w.get("nthreads", 1) for w in workers.values()),
            code=stack_record.code_fingerprint(),
            environment=environment,
            socket=str(relay),
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            log=str(log),
        )
        stack_record.write(record)
        stack.callback(path.unlink, missing_ok=True)  # first thing on the way down: no run picks a stack that is going
        print(f"up: {' | '.join(record.describe())}", flush=True)
        stopping.wait()
        print("stopping", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.runtime.stack_process", description="The process `taxi-pipeline up` starts.")
    parser.add_argument("--port", type=int, default=stack_record.DEFAULT_PORT)
    parser.add_argument("--n-workers", type=int, default=None)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        _serve(args.port, args.n_workers, args.threads_per_worker)
    except PipelineError as exc:
        print(f"error: {exc}", flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
