"""The loss of a run's Dask scheduler, of every worker, or of a worker per try of one task ends the run in one line.

Left to Dask, a run whose scheduler is killed waits out the client's reconnect
timeout (30 s), though its futures were cancelled the moment the connection
dropped, and then ends in a 200-line ``FutureCancelledError: ... cancelled for
reason: unknown``. With every worker gone (nannies too) the scheduler keeps the
tasks waiting for a worker for ever: its ``no-workers-timeout`` is off by default,
and a remote scheduler's config is not the run's to set. A task that kills its
worker each time (a chunk too big for the workers' memory) ends, after
``allowed-failures`` restarts, as a ``KilledWorker`` that names a Dask key.

So, while a flow runs on a Dask task runner, :func:`watched` looks at its
client every second and closes it when the scheduler is lost, or when a cluster
that had workers has had none for ``distributed.scheduler.no-workers-timeout``
(read here, on the client's side; :data:`NO_WORKERS_GRACE` when unset), or every
worker stayed paused that long (its memory above the pause threshold: it takes
no task, and a nanny restarts it only at the terminate threshold), while the
run waits for tasks; the flow's waits then end at once, and the error leaving
the block becomes a :class:`~pipeline.errors.PipelineError` naming what failed.
A cluster that never had a worker yet (an adaptive one still queueing its jobs)
is left to wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
from dask.utils import format_bytes, parse_timedelta
from distributed.scheduler import KilledWorker, NoValidWorkerError, NoWorkerError
from prefect.context import FlowRunContext

from pipeline.errors import PipelineError
from pipeline.runtime.runner import KeyedDaskTaskRunner

log = logging.getLogger(__name__)

#: Seconds without any worker (after having had some) before the run gives up, unless Dask's config says otherwise.
NO_WORKERS_GRACE = 60.0
#: How often the client is looked at; ten of them bound an RPC to a scheduler that stopped answering.
POLL_SECONDS = 1.0


def no_workers_grace() -> float:
    """``distributed.scheduler.no-workers-timeout`` in seconds, else :data:`NO_WORKERS_GRACE`."""
    value = dask.config.get("distributed.scheduler.no-workers-timeout", None)
    grace = parse_timedelta(value) if value is not None else None
    return NO_WORKERS_GRACE if grace is None else float(grace)


class _Watch:
    """A thread that closes ``runner``'s client, once it has one, when its cluster is lost; :attr:`lost` says why."""

    def __init__(self, runner: Any, during: str, grace: float) -> None:
        self.runner, self.during, self.grace = runner, during, grace
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-watch", daemon=True)
        self._thread.start()

    def scheduler_lost(self) -> str:
        return f"the Dask scheduler at {self.runner.address} went away during {self.during}"

    def stuck(self, workers: list[dict[str, Any]]) -> str:
        """Why no worker runs tasks: none is left, or every one is paused (its memory above the pause threshold)."""
        where = f"every Dask worker of the scheduler at {self.runner.address}"
        if not workers:
            grace = f"none for {self.grace:g} s; distributed.scheduler.no-workers-timeout sets how long"
            return f"{where} went away during {self.during} ({grace})"
        limit = max(w.get("memory_limit") or 0 for w in workers)
        return (
            f"{where} stayed paused during {self.during}, its memory above distributed.worker.memory.pause of its "
            f"{format_bytes(limit)} (for {self.grace:g} s): give the workers more memory, or each task fewer rows with a smaller "
            "--chunk-rows"
        )

    def workers(self, client: Any) -> list[dict[str, Any]] | None:
        """The scheduler's workers (their identities), or None when it does not answer."""
        try:
            info = client.sync(client.scheduler.identity, n_workers=-1, callback_timeout=10 * POLL_SECONDS)
        except Exception:  # the scheduler is busy or going: the client's status will say which
            return None
        return list(info.get("workers", {}).values())

    def _run(self) -> None:
        had_workers, stuck_since = False, None
        while not self._stop.wait(POLL_SECONDS):
            client = self.runner._client  # made at the first submit (prefect-dask 0.3.7)
            if client is None:
                continue
            if client.status != "running":  # "connecting": its futures were cancelled when the connection dropped
                self._end(client, self.scheduler_lost())
                return
            workers = self.workers(client)
            if workers is None:
                continue
            running = any(w.get("status") == "running" for w in workers)
            if running or not client.futures:
                had_workers, stuck_since = had_workers or running, None
            elif had_workers:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since >= self.grace:
                    self._end(client, self.stuck(workers))
                    return

    def _end(self, client: Any, reason: str) -> None:
        self.lost = reason
        log.debug("closing the run's Dask client: %s", reason)
        client.close(timeout=10 * POLL_SECONDS)  # every wait on its futures ends, cancelled

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def killed_worker(what: str, exc: KilledWorker) -> str:
    """One line for a task that took its worker down at every try (``what`` names the task or the rows it reads):
    most often it needs more memory than a worker has, and Dask stops after ``allowed-failures`` restarts."""
    limit = getattr(exc.last_worker, "memory_limit", 0)
    memory = f" (out of memory? a worker has {format_bytes(limit)})" if limit else ""
    tries = exc.allowed_failures + 1
    return f"{what}: the worker running it died at each of {tries} tries{memory}; give each task fewer rows with a smaller --chunk-rows"


@contextmanager
def watched() -> Iterator[None]:
    """In a flow run on a Dask task runner: see the module docstring. Elsewhere it does nothing."""
    context = FlowRunContext.get()
    runner: Any = context.task_runner if context is not None else None
    if context is None or not isinstance(runner, KeyedDaskTaskRunner) or not runner.address:
        yield
        return
    watch = _Watch(runner, context.flow.name if context.flow is not None else "the run", no_workers_grace())
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        client = runner._client
        if watch.lost is None and client is not None and client.status != "running":
            watch.lost = watch.scheduler_lost()
        if watch.lost is not None:
            raise PipelineError(watch.lost) from exc
        if isinstance(exc, (NoWorkerError, NoValidWorkerError)):  # the scheduler's own no-workers-timeout came first
            raise PipelineError(watch.stuck(watch.workers(client) or [])) from exc
        if isinstance(exc, KilledWorker):
            raise PipelineError(killed_worker(runner.run_names.get(str(exc.task), str(exc.task)), exc)) from exc
        raise
    finally:
        watch.stop()
