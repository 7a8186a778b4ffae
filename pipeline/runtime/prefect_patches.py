"""Every workaround that touches Prefect internals, in one place, keyed to the Prefect versions it was read from.

Each names its upstream issue and when it can go (docs/explanation/prefect-workarounds.md has the table):

* Memoised settings serialisation (prefect #18191, open): every ``submit`` to a
  Dask task runner serialises the whole settings context (a pydantic dump of
  all settings, walked for secrets), 50-100 ms per task on 2 cores, paid
  serially in the flow process. A run's settings do not change between
  submits, so :func:`installed` memoises it on the identity of the settings
  context object (``temporary_settings`` makes a new one, so a change is never
  missed), for the scope of a run only. Delete when #18191 is fixed.
* A flow run's end without the 0-1 s wait for its heartbeat thread
  (:func:`installed` as well; the join came with prefect PR #19641). Delete when
  the sync engine stops joining it, as the async engine already does.
* Re-pointing a long-lived Dask worker at a new API (:func:`point_prefect_at`):
  Prefect's ``EventsWorker`` and ``APILogWorker`` keep the API they started
  with for the life of the process, so the local stack's workers would send a
  run's task runs to the API of the run before. This one is correctness:
  ``taxi-pipeline up`` refuses a Prefect outside :data:`SUPPORTED`.
* Cheaper task starts on a worker (:func:`lean_task_starts`): every task run
  rebuilds the flow's settings from their serialised dict (~45 ms of pydantic
  settings sources) and makes two API clients, each loading certifi's CA
  bundle into a new SSL context (~30 ms each): ~0.1 s of every task on an idle
  machine, 0.2 s under load, as much as a 3M-row chunk's statistics. Delete the
  settings part with #18191, the SSL part when prefect PR #19106 (clients take
  an SSL context) is released.

On a Prefect version other than :data:`SUPPORTED` they do nothing and warn
once: a run is then slower or, on reused workers, loses task runs, but never
breaks on an internal that moved. Prefect is imported lazily, so a Dask worker
can load this module before Prefect.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

#: The Prefect releases whose internals these were read from (and tested on): what constraints.txt locks.
SUPPORTED = ("3.9.1",)


def unknown_version() -> str | None:
    """The installed Prefect's version when these workarounds do not know it, else ``None``."""
    import prefect

    return None if prefect.__version__ in SUPPORTED else str(prefect.__version__)


@functools.cache
def supported() -> bool:
    """Whether the installed Prefect is one these workarounds know; warns once when not."""
    import prefect

    if unknown_version() is None:
        return True
    warnings.warn(
        f"prefect {prefect.__version__}: taxi-pipeline's Prefect workarounds are written for {known()} and are off; "
        "runs may be slower, and Dask workers that served another Prefect API may lose task runs",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


def known() -> str:
    """The Prefect releases the workarounds know, for a message: ``3.9.1``."""
    return ", ".join(SUPPORTED)


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
    """A flow run's end does not wait for its heartbeat thread (prefect 3.9.1 ``flow_engine._send_heartbeats``).

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


def lean_task_starts() -> None:
    """For this process: task runs reuse the Settings of identical serialised settings, and API clients share one SSL context per CA file.

    Idempotent; a Dask worker installs it once (:class:`pipeline.runtime.plugins.PrefectApiPlugin`). Settings are
    keyed by their whole serialised dict, so a run with other settings (another API, say) builds its own.
    """
    if not supported():
        return
    from prefect import task_engine
    from prefect.client import orchestration

    if not getattr(task_engine.hydrated_context, "_taxi_pipeline_patch", False):  # type: ignore[attr-defined]
        setattr(task_engine, "hydrated_context", _with_known_settings(task_engine.hydrated_context))  # type: ignore[attr-defined]  # noqa: B010
    if not isinstance(orchestration.ssl, _SharedContexts):  # type: ignore[attr-defined]
        setattr(orchestration, "ssl", _SharedContexts(orchestration.ssl))  # type: ignore[attr-defined]  # noqa: B010


def _with_known_settings(original: Any) -> Any:
    from prefect.context import SettingsContext

    @functools.lru_cache(maxsize=4)
    def settings(key: str) -> Any:
        serialized = json.loads(key)
        return SettingsContext(profile=serialized["profile"], settings=serialized["settings"]).settings

    def hydrated_context(serialized_context: dict[str, Any] | None = None, client: Any = None) -> Any:
        given = (serialized_context or {}).get("settings_context")
        if given and isinstance(given.get("settings"), dict):
            known = settings(json.dumps(given, sort_keys=True, default=str))
            serialized_context = {**serialized_context, "settings_context": {**given, "settings": known}}  # type: ignore[dict-item]
        return original(serialized_context, client)

    hydrated_context._taxi_pipeline_patch = True  # type: ignore[attr-defined]
    return hydrated_context


class _SharedContexts:
    """Prefect's ``ssl`` module as its API clients see it, but for one SSL context per CA file.

    A context is only read after it is made for a CA file, so sharing it is safe; the bare call
    (the client's insecure branch, which then changes the context) still gets a new one.
    """

    def __init__(self, module: Any) -> None:
        self._module = module
        self._contexts: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def create_default_context(self, *args: Any, **kwargs: Any) -> Any:
        cafile = kwargs.get("cafile")
        if args or set(kwargs) != {"cafile"} or not isinstance(cafile, str):
            return self._module.create_default_context(*args, **kwargs)
        if cafile not in self._contexts:
            self._contexts[cafile] = self._module.create_default_context(cafile=cafile)
        return self._contexts[cafile]


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

    from pipeline.runtime.prefect_api import drain_services

    previous = get_current_settings().api.url
    refresh_global_settings_context()
    if previous == api_url:
        return False
    drain_services(drain_timeout)
    log.info("Prefect API in this process: %s (was %s)", api_url, previous)
    return True
