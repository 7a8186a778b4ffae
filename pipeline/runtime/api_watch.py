"""A run whose Prefect API is down, or goes away mid-run, ends in one line within seconds, never a hang.

With its API killed, a run never ended by itself: its tasks fail on the workers
("Failed to reach API"), its client retries each state it reports, and its
event service then sends every buffered event to the dead API, about 7 s each
(a ``train`` was still running after 120 s). A run cannot go on without its API:
every task run reports to it. So a run checks that its API answers before it
starts a cluster (:func:`check_answers`), and :func:`watched_api` asks the API's
``/health`` twice a second meanwhile; at :data:`MISSES` refused connections in a
row (or :data:`SLOW_GRACE` seconds without an answer) it prints
one line and ends the process and the processes it started (its LocalCluster's workers). It
never does so while the run replaces its files (:func:`writing`): those end first, whole.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import httpx
import psutil

from pipeline.errors import PipelineError

#: Seconds between two looks at the API, and the refused connections in a row that mean it is gone. A blip shorter
#: than that is survived; a longer one fails the run's tasks anyway (each needs the API to start).
POLL_SECONDS = 0.5
MISSES = 3
#: An API that answers no health check for this long, though it accepts connections (hung, or its host unreachable),
#: is gone too; each check waits :data:`HEALTH_TIMEOUT` for an answer (a loaded machine's API can take seconds).
SLOW_GRACE = 60.0
HEALTH_TIMEOUT = 10.0
#: The exit code of a run whose API went away (as for any error the CLI reports).
EXIT_CODE = 2

_WRITING = threading.Lock()
_WRITTEN = threading.Event()
#: Called with the exit code just before the watch ends the process (the local stack's relay reports it to its client).
_BEFORE_EXIT: list[Callable[[int], None]] = []


def before_exit(callback: Callable[[int], None]) -> None:
    """Have ``callback(code)`` run when :func:`watched_api` ends this process, before it does."""
    _BEFORE_EXIT.append(callback)


def _problem(url: str, timeout: float) -> str | None:
    """Why the API at ``url`` does not answer its health check, or None when it does."""
    try:
        with httpx.Client(timeout=timeout) as client:
            status = client.get(f"{url.rstrip('/')}/health").status_code
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None if status == 200 else f"/health answered {status}"


def _gone(url: str) -> bool | None:
    """None when the API answers; True when nothing listens there (connection refused); False when it fails otherwise
    (slow, or answering errors): an API on a busy machine can take seconds to answer and is not gone."""
    try:
        with httpx.Client(timeout=HEALTH_TIMEOUT) as client:
            return None if client.get(f"{url.rstrip('/')}/health").status_code == 200 else False
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False


def check_answers(url: str, origin: str = "PREFECT_API_URL") -> None:
    """Refuse, in one line and before any cluster starts, a run whose API does not answer (Prefect would retry it for 20 s)."""
    problem = _problem(url, timeout=5)
    if problem is not None:
        raise PipelineError(f"the Prefect API at {url} ({origin}) does not answer ({problem}); start it, or point {origin} elsewhere")


@contextmanager
def writing() -> Iterator[None]:
    """Meanwhile the run replaces its files: a lost API ends the run after this, not during it."""
    with _WRITING:
        yield
    _WRITTEN.set()


@contextmanager
def quiet_resource_tracker() -> Iterator[None]:
    """Processes started meanwhile (the resource tracker of the run's LocalCluster) do not warn of the semaphores they clean
    up after a run that ended without closing its cluster (:func:`watched_api`): after the run's one line, that is noise."""
    previous = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [previous, "ignore::UserWarning:multiprocessing.resource_tracker"]))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = previous


@contextmanager
def watched_api(url: str) -> Iterator[None]:
    """Meanwhile, an API that stops answering ends this process with one line and :data:`EXIT_CODE`."""
    _WRITTEN.clear()
    stop = threading.Event()
    # Prefect's log service writes "--- Error logging to API ---" to stderr, mid-line, at each batch it cannot send
    # (prefect/logging/handlers.py) unless logging.raiseExceptions is off: the watch says it once.
    raising, logging.raiseExceptions = logging.raiseExceptions, False

    def watch() -> None:
        refused, failing_since = 0, None
        while not stop.wait(POLL_SECONDS):
            gone = _gone(url)
            if gone is None:
                refused, failing_since = 0, None
                continue
            refused = refused + 1 if gone else 0
            failing_since = failing_since or time.monotonic()
            lost = refused >= MISSES or time.monotonic() - failing_since >= SLOW_GRACE
            if lost and not stop.is_set():
                with _WRITING:  # a write under way ends first; none starts after
                    logging.disable(logging.CRITICAL)  # the run's failing tasks and Prefect's retries would bury the line
                    for child in psutil.Process().children(recursive=True):  # its LocalCluster's workers: else they log on
                        with suppress(psutil.Error):
                            child.kill()
                    done = "its files were written whole before" if _WRITTEN.is_set() else "nothing was written"
                    sys.stderr.write(f"error: the Prefect API at {url} went away during the run; {done}\n")
                    sys.stderr.flush()
                    for callback in _BEFORE_EXIT:
                        callback(EXIT_CODE)
                    os._exit(EXIT_CODE)

    thread = threading.Thread(target=watch, name="prefect-api-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        logging.raiseExceptions = raising
