"""``metrics.json``: written last and atomically, so its presence means a complete run."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.results import RunResult
from pipeline.edge.atomic import write_bytes

METRICS_FILE = "metrics.json"


def write_metrics(directory: Path, result: RunResult) -> Path:
    """Write ``directory/metrics.json`` atomically and return its path."""
    path = Path(directory) / METRICS_FILE
    text = json.dumps(result.to_dict(), indent=2, sort_keys=True).encode()
    write_bytes(path, lambda fh: fh.write(text))
    return path


def read_metrics(directory: Path) -> RunResult:
    """The run result a ``metrics.json`` holds."""
    return RunResult.from_dict(json.loads((Path(directory) / METRICS_FILE).read_text()))
