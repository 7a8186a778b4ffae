"""Ctrl-C stops a run within seconds, once, and its flow run ends Crashed in the API rather than RUNNING forever.

A terminal sends SIGINT to every process of its foreground group: the run's
temporary Prefect API and its LocalCluster's workers too. The API died first,
so the flow run's crash could not be recorded and the client retried it for a
minute, while every worker printed its own traceback. So the API starts with
SIGINT blocked (:func:`children_ignore_interrupts`: the mask is inherited across
fork and exec), the workers only go quiet on it (:func:`dask_setup`, a worker preload),
and the run stops both itself.

In the main thread Python raises ``KeyboardInterrupt`` wherever the signal
lands; inside a garbage-collector callback (distributed installs one) it is
printed as "ignored" and the run carries on. :func:`interruptible` raises it
again in that case, and ends the process at once on a second Ctrl-C or when
stopping takes longer than its grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

#: The exit code of a process ended by SIGINT, as shells report it.
EXIT_CODE = 130


class Interrupted(BaseException):
    """Ctrl-C during a run. Prefect records a flow run that a BaseException ends as Crashed; not a
    ``KeyboardInterrupt``, so that click does not print a blank line for it."""


@contextmanager
def children_ignore_interrupts() -> Iterator[None]:
    """Processes started meanwhile, and by threads started meanwhile, never see SIGINT.

    A Ctrl-C that arrives meanwhile waits (pending) and is raised at the end of
    the block. Outside the main thread this does nothing: there Python does not
    handle signals anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


#: Set by the first Ctrl-C under :func:`interruptible`: the exceptions that follow are its aftermath.
_INTERRUPTED = threading.Event()
#: Set by :func:`completed`: the run's work is done and in place, so a Ctrl-C no longer stops it.
_COMPLETED = threading.Event()


def completed() -> None:
    """The run's flow has finished and its files are in place: under :func:`interruptible`, a Ctrl-C from now on
    (while the cluster and API close, or the results print) is ignored with one line, and the run exits as completed.

    Else a Ctrl-C a second after the flow finished ended a run that had written its model with exit code 130,
    after (or instead of) printing its results.
    """
    _COMPLETED.set()


@contextmanager
def interrupt_wins() -> Iterator[None]:
    """After a Ctrl-C, an exception leaving this block is the interrupt: it leaves as :class:`Interrupted`.

    The handler raises :class:`Interrupted` wherever the main thread is. Inside a Python callback that a C
    extension runs (pydantic-core's serializers, while a task is submitted) the extension wraps it in an
    ordinary exception, and Prefect then records the flow run as Failed instead of Crashed.
    """
    try:
        yield
    except Exception as exc:
        if _INTERRUPTED.is_set():
            raise Interrupted from exc
        raise


@contextmanager
def interruptible(say: Callable[[str], None], grace: float = 30.0) -> Iterator[None]:
    """Meanwhile, the first Ctrl-C raises :class:`Interrupted` in the main thread (again if it was swallowed),
    silences logging (the stop's own noise buries the line that matters), and gives the run ``grace`` seconds
    to stop; a second Ctrl-C, or the end of the grace period, ends the process with :data:`EXIT_CODE`.

    ``say`` prints the one line the user sees in those cases. After an interrupt, logging stays off: the
    process is expected to exit.
    """
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main, "signal handlers belong to the main thread"
    state = {"interrupts": 0, "redelivering": False}
    _COMPLETED.clear()  # a run before this one (the Python API's, in the same process) completed, not this one
    done = threading.Event()

    def end_now(line: str) -> None:
        say(line)
        os._exit(EXIT_CODE)

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if _COMPLETED.is_set():  # too late to stop anything: the results are written, the rest is closing down
            if not state["redelivering"]:
                say("the run has completed; closing its cluster and API (Ctrl-C is ignored now)")
            state["redelivering"] = False
            return
        if state["redelivering"]:
            state["redelivering"] = False
            raise Interrupted
        state["interrupts"] += 1
        _INTERRUPTED.set()
        if state["interrupts"] > 1:
            end_now("interrupted again: exiting now, without cleaning up")
        logging.disable(logging.CRITICAL)
        warnings.simplefilter("ignore")  # the stop's warnings (pydantic's, of half-built objects) are noise too
        threading.Thread(target=watchdog, name="interrupt-watchdog", daemon=True).start()
        raise Interrupted

    def watchdog() -> None:
        if not done.wait(grace) and not _COMPLETED.is_set():
            end_now(f"interrupted: the run did not stop within {grace:g} s; exiting without cleaning up")

    previous_unraisable = sys.unraisablehook

    def unraisable(hook_args: Any) -> None:
        if isinstance(hook_args.exc_value, Interrupted):  # swallowed (a GC callback): raise it again, from plain code
            state["redelivering"] = True
            threading.Timer(0.01, signal.pthread_kill, (main, signal.SIGINT)).start()  # not from here: still in the callback
            return
        previous_unraisable(hook_args)

    previous_handler = signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = unraisable
    try:
        yield
    except BaseException as exc:
        if state["interrupts"] and not isinstance(exc, Interrupted):
            raise Interrupted from None  # cleanup code that the interrupt cut short failed in its own way
        raise
    finally:
        done.set()
        _INTERRUPTED.clear()
        _COMPLETED.clear()
        sys.unraisablehook = previous_unraisable
        signal.signal(signal.SIGINT, previous_handler)
        if not state["interrupts"]:  # after one, the process is on its way out and Prefect's services complain at exit
            logging.disable(logging.NOTSET)


#: A Dask worker preload (``distributed.worker.preload``): this module's :func:`dask_setup` runs in each worker process.
WORKER_PRELOAD = __name__


def dask_setup(worker: Any) -> None:
    """In a LocalCluster's worker process: on Ctrl-C (the terminal sends it to the whole group) go quiet and
    wait for the run to close the cluster, instead of dying with a traceback or logging the shutdown's races,
    or an API gone.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _silence)
    logging.getLogger("distributed.worker.state_machine").addFilter(_NoCancelledTaskWarnings())
    # Nor print Prefect's "--- Error logging to API ---" mid-line on the run's terminal when its API went away: the run
    # says so in one line (pipeline.runtime.api_watch); the log service prints it only while raiseExceptions is on.
    logging.raiseExceptions = False


def _silence(signum: int, frame: FrameType | None) -> None:
    logging.disable(logging.CRITICAL)


class _NoCancelledTaskWarnings(logging.Filter):
    """A task cancelled as its run stops (Ctrl-C, or another task's error) is no news: drop Dask's warning per task."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "<Task cancelled" not in record.getMessage()
