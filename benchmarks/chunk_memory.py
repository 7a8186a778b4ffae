"""Peak memory of one ``chunk-stats`` task, measured in a fresh process.

``python -m benchmarks.chunk_memory FOLDER MONTH ROWS [INDEX [FOLDS]]`` runs the task body on
the month's row-group range number ``INDEX`` (default the first) of about ``ROWS`` rows,
with ``FOLDS`` folds (default none), and prints JSON: rows,
peak bytes above the process's footprint before the task, pickled statistics
bytes (what travels between workers), seconds. A fresh process, because
Arrow's allocator keeps freed memory for reuse, so an earlier chunk would hide
the next one's peak; and RSS, because tracemalloc does not see Arrow's buffers.
Linux only: the peak is ``VmHWM`` after resetting it through ``/proc/self/clear_refs``.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from benchmarks.common import SPEC, TAXI
from pipeline.core.months import Month
from pipeline.edge import reader
from pipeline.edge.chunks import chunk_statistics

CLEAR_REFS = Path("/proc/self/clear_refs")
_T = TypeVar("_T")


def _status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_of(work: Callable[[], _T]) -> tuple[_T, int, float]:
    """``work()``'s result, its peak bytes above the footprint before it, and its seconds."""
    CLEAR_REFS.write_text("5")  # the high-water mark restarts from the current RSS
    before = _status_bytes("VmRSS")
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    return result, _status_bytes("VmHWM") - before, seconds


def measure(folder: Path, month: Month, rows: int, index: int = 0, folds: int = 1) -> dict[str, float]:
    plan = reader.locate(str(folder), TAXI, month, SPEC.columns())
    chunk = reader.plan(plan.layout, rows)[index]
    result, peak, seconds = peak_of(lambda: chunk_statistics(plan, chunk, SPEC, folds))
    return {"rows": chunk.rows, "peak_bytes": peak, "stats_bytes": len(pickle.dumps(result)), "seconds": seconds}


if __name__ == "__main__":
    folder, month, rows, *more = sys.argv[1:]
    print(json.dumps(measure(Path(folder), Month.parse(month), int(rows), *map(int, more))))


def memory_figures(probe: dict[str, int], smallest: dict[str, int]) -> dict[str, float]:
    """Peak bytes, bytes per row, growth over linear (1.0: linear) and, past the smallest chunk, the marginal bytes per row."""
    figures: dict[str, float] = {
        "peak_bytes": probe["peak_bytes"],
        "bytes_per_row": probe["peak_bytes"] / probe["rows"],
        "growth_over_linear": (probe["peak_bytes"] / smallest["peak_bytes"]) / (probe["rows"] / smallest["rows"]),
    }
    if probe is not smallest:
        figures["marginal_bytes_per_row"] = (probe["peak_bytes"] - smallest["peak_bytes"]) / (probe["rows"] - smallest["rows"])
    return figures


def probe_peaks(module: str, arguments: dict[int, list[str]], root: Path) -> dict[int, dict[str, float]]:
    """``python -m module *arguments[key]`` in a fresh interpreter per key (a peak belongs to one process); each prints JSON."""
    import subprocess

    out = {}
    for key, args in arguments.items():
        probe = subprocess.run([sys.executable, "-m", module, *args], cwd=root, check=True, capture_output=True, text=True)
        out[key] = json.loads(probe.stdout)
    return out
