"""One Prefect API per run: the flow's, shared by every Dask worker.

Without ``PREFECT_API_URL`` Prefect starts a temporary server in the flow process
*and another in every Dask worker process*, so task runs scatter over private
databases. Here the run brings up one server (:mod:`prefect_server`), exports its
URL before any worker starts (LocalCluster workers inherit the environment), and
stops it at the end.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_API_URL, temporary_settings

from pipeline.runtime import prefect_server
from pipeline.runtime.interrupts import children_ignore_interrupts

log = logging.getLogger(__name__)

#: Said under a temporary API's address: its links die with the run.
TEMPORARY_NOTE = (
    "  (a temporary API: its UI and the 'View at' link work until this run ends; to browse past runs, "
    "start `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api before running)"
)


def configured_api_url() -> str | None:
    """The API URL from the environment or the active Prefect profile, if any."""
    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None


def work_pool_of(deployment: str) -> str | None:
    """The work pool of the deployment ``FLOW/NAME`` on the configured API, if it exists and runs on one.

    A served deployment (``taxi-pipeline deploy``) has none; one from ``prefect deploy`` (prefect.yaml) has.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(deployment).work_pool_name
        except ObjectNotFound:
            return None


def ui_url(flow_run_id: str) -> str:
    """The flow run's page in the Prefect UI (``PREFECT_UI_URL``, else the API's address without ``/api``)."""
    from prefect.settings import get_current_settings

    base = get_current_settings().ui_url or current_api_url().removesuffix("/api")
    return f"{str(base).rstrip('/')}/runs/flow-run/{flow_run_id}"


def current_api_url() -> str:
    """The API this process reports to: the configured one, else the temporary server Prefect started for it."""
    from prefect.client.orchestration import get_client

    return configured_api_url() or str(get_client().api_url).rstrip("/")


def drain_services(timeout: float | None = None) -> None:
    """Send the logs and events Prefect holds to the current API now (before it stops), and stop their services.

    Not a workaround: ``drain_all`` is the services' public method, and Prefect's own
    ``prefect_test_harness`` drains both so before it stops its server. Skipped, the services
    drain at the interpreter's exit instead, when the run's API is gone: the log client then
    retries the connection five times (2 + 4 + ... + 32 s) and prints ``--- Error logging to API ---``.
    The next log or event starts a new service.
    """
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


#: Seconds a failed or interrupted run gives Prefect's services to send what they hold: Ctrl-C must stop a run within
#: its grace period (:func:`pipeline.runtime.interrupts.interruptible`) even on a busy machine, where an unbounded
#: drain took longer than that.
DRAIN_AFTER_FAILURE = 3.0


@contextmanager
def _draining() -> Iterator[None]:
    """Drain Prefect's services on the way out: wholly after a run that ended, for a bounded time after one that failed."""
    try:
        yield
    except BaseException:
        drain_services(timeout=DRAIN_AFTER_FAILURE)
        raise
    drain_services()


@contextmanager
def prefect_api(url: str | None = None, timeout: int = 180) -> Iterator[str]:
    """Yield the run's API URL (``url``, else the configured one), starting a local server on 127.0.0.1 when there is none."""
    url = url or configured_api_url()
    if url:
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        try:
            # drained here too: a run forked by the local stack's relay ends in os._exit, with no exit hooks
            with temporary_settings(updates={PREFECT_API_URL: url}), _draining():
                yield url
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    log.info("starting a local Prefect API for this run")
    with children_ignore_interrupts():  # else Ctrl-C stops the API before the flow run's crash is recorded
        server = prefect_server.start_temporary(timeout=timeout)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}), _draining():
            yield server.api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
