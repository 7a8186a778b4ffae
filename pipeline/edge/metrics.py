"""``metrics.json``: written last and whole, so its presence means a complete run."""

from __future__ import annotations

import json

from pipeline.core.results import RunResult
from pipeline.edge import storage
from pipeline.edge.storage import Location, Where

METRICS_FILE = "metrics.json"


def metrics_bytes(result: RunResult) -> bytes:
    """The ``metrics.json`` document of a run."""
    return json.dumps(result.to_dict(), indent=2, sort_keys=True).encode()


def write_metrics(directory: Where, result: RunResult) -> Location:
    """Write ``directory/metrics.json`` whole (atomically locally) and return where."""
    where = storage.locate(directory).child(METRICS_FILE)
    storage.put(where, metrics_bytes(result))
    return where


def read_metrics(directory: Where) -> RunResult:
    """The run result a ``metrics.json`` holds."""
    return RunResult.from_dict(json.loads(storage.read_bytes(storage.locate(directory).child(METRICS_FILE))))
