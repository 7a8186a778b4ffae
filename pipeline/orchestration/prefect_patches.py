"""Every workaround that touches Prefect internals, in one place, for the Prefect version it was read from.

* Memoised settings serialisation (prefect #18191, open): every ``submit`` to a
  Dask task runner serialises the whole settings context (a pydantic dump of
  all settings, walked for secrets), 50-100 ms per task on 2 cores, paid
  serially in the flow process. A run's settings do not change between
  submits, so :func:`installed` memoises it on the identity of the settings
  context object (``temporary_settings`` makes a new one, so a change is never
  missed), for the scope of a run only.
* A flow run's end without the 0-1 s wait for its heartbeat thread
  (:func:`installed` as well).
* Draining the log and event services (:func:`drain_services`) before a
  run's API goes, else exit stalls on their retries.
* Re-pointing a long-lived Dask worker at a new API (:func:`point_prefect_at`):
  Prefect's ``EventsWorker`` and ``APILogWorker`` keep the API they started
  with for the life of the process.

On a Prefect version other than :data:`SUPPORTED` they do nothing and warn
once: a run is then slower or, on reused workers, loses task runs, but never
breaks on an internal that moved. Prefect is imported lazily, so a Dask worker
can load this module before Prefect.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

#: The Prefect releases whose internals these were read from (and tested on).
SUPPORTED = ("3.8.8",)


@functools.cache
def supported() -> bool:
    """Whether the installed Prefect is one these workarounds know; warns once when not."""
    import prefect

    if prefect.__version__ in SUPPORTED:
        return True
    warnings.warn(
        f"prefect {prefect.__version__}: taxi-pipeline's Prefect workarounds are written for "
        f"{', '.join(SUPPORTED)} and are off; runs may be slower",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


@contextmanager
def installed() -> Iterator[None]:
    """Memoise ``SettingsContext.serialize`` and end flow runs without the heartbeat wait, for this scope.

    Nested scopes share the outer one's patches; the originals are back after.
    """
    if not supported():
        yield
        return
    with _memoised_settings(), _heartbeats_stop_at_once():
        yield


@contextmanager
def _heartbeats_stop_at_once() -> Iterator[None]:
    """A flow run's end does not wait for its heartbeat thread (prefect 3.8.8 ``flow_engine._send_heartbeats``).

    The thread sleeps in whole seconds between checks of its stop event, and a sync flow run joins it at
    the end: 0-1 s (0.5 on average) per flow run, about a second of every two-flow training run. Prefect's
    async engine already leaves it (``join_on_exit=False``); the daemon thread then returns within a second
    without sending anything more.
    """
    from prefect import flow_engine

    original = flow_engine._send_heartbeats
    if getattr(original, "_taxi_pipeline_patch", False):
        yield
        return

    @contextmanager
    def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        with original(engine, join_on_exit=False):
            yield

    send_heartbeats._taxi_pipeline_patch = True  # type: ignore[attr-defined]
    flow_engine._send_heartbeats = send_heartbeats
    try:
        yield
    finally:
        flow_engine._send_heartbeats = original


@contextmanager
def _memoised_settings() -> Iterator[None]:
    from prefect.context import SettingsContext

    original = SettingsContext.serialize
    if getattr(original, "_taxi_pipeline_memo", False):
        yield
        return
    memo: dict[str, Any] = {}

    def serialize(self: SettingsContext, include_secrets: bool = True) -> dict[str, Any]:
        if memo.get("context") is self and memo.get("include_secrets") == include_secrets:
            return memo["result"]  # type: ignore[no-any-return]
        result = original(self, include_secrets=include_secrets)
        memo.update(context=self, include_secrets=include_secrets, result=result)  # holds self: its id is not reused
        return result

    serialize._taxi_pipeline_memo = True  # type: ignore[attr-defined]
    SettingsContext.serialize = serialize  # type: ignore[method-assign]
    try:
        yield
    finally:
        SettingsContext.serialize = original  # type: ignore[method-assign]


def drain_services(timeout: float | None = None) -> None:
    """Send buffered logs and events to the current API now (before it stops)."""
    if not supported():
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    if timeout is not None:
        for service in (EventsWorker, APILogWorker):
            service.drain_all(timeout=timeout, at_exit=False)
        return

    async def drain() -> None:
        for result in (APILogWorker.drain_all(), EventsWorker.drain_all()):
            if inspect.isawaitable(result):
                await result

    run_coro_as_sync(drain())


def point_prefect_at(api_url: str, drain_timeout: float = 5.0) -> bool:
    """Make this process report to ``api_url``; return whether a previous API was replaced.

    Safe before or after ``prefect`` is imported. Services bound to another API
    are drained (for at most ``drain_timeout`` seconds: their API may be gone) and
    stopped, and Prefect makes new ones on the next task run.
    """
    os.environ["PREFECT_API_URL"] = api_url
    if "prefect.context" not in sys.modules or not supported():
        return False  # prefect will read the variable when a task first imports it
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    previous = get_current_settings().api.url
    refresh_global_settings_context()
    if previous == api_url:
        return False
    drain_services(drain_timeout)
    log.info("Prefect API in this process: %s (was %s)", api_url, previous)
    return True
