"""A worker's closing heartbeat race stays out of a run's output; a failed heartbeat while it runs does not."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import pytest
from distributed.comm.core import CommClosedError
from distributed.core import Status

from pipeline.runtime.plugins import ClosingHeartbeat


def _record(message: str) -> logging.LogRecord:
    try:
        raise CommClosedError("in <TCP (closed) ConnectionPool.heartbeat_worker>: Stream is closed")
    except CommClosedError:
        return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, message, (), sys.exc_info())


@pytest.mark.parametrize(
    ("status", "kept"),
    [(Status.closing, False), (Status.closing_gracefully, False), (Status.closed, False), (Status.running, True)],
)
def test_a_failed_heartbeat_is_dropped_only_while_the_worker_closes(status, kept):
    worker = SimpleNamespace(status=status)
    heartbeat = _record("Failed to communicate with scheduler during heartbeat.")
    assert ClosingHeartbeat(worker).filter(heartbeat) is kept
    assert ClosingHeartbeat(worker).filter(_record("Unexpected exception during heartbeat. Closing worker.")) is True


def test_the_filter_reads_the_workers_state_when_the_record_comes(caplog):
    worker = SimpleNamespace(status=Status.running)
    logger = logging.getLogger("distributed.worker")
    logger.addFilter(closing := ClosingHeartbeat(worker))
    try:
        with caplog.at_level(logging.ERROR, logger="distributed.worker"):
            logger.error("Failed to communicate with scheduler during heartbeat.", exc_info=True)
            worker.status = Status.closing
            logger.error("Failed to communicate with scheduler during heartbeat.", exc_info=True)
    finally:
        logger.removeFilter(closing)
    assert len(caplog.records) == 1
