"""``metrics.json``: written last and atomically, so its presence means a complete run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.edge.atomic import write_bytes

METRICS_FILE = "metrics.json"


def write_metrics(directory: Path, metrics: dict[str, Any]) -> Path:
    """Write ``directory/metrics.json`` atomically and return its path."""
    path = Path(directory) / METRICS_FILE
    text = json.dumps(metrics, indent=2, sort_keys=True).encode()
    write_bytes(path, lambda fh: fh.write(text))
    return path
