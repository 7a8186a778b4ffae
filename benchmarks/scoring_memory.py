"""Peak memory of one ``score-chunk`` task, measured in a fresh process.

``python -m benchmarks.scoring_memory FOLDER MONTH ROWS MODEL PART`` loads the
model folder ``MODEL``, then runs the task body on the month's first row-group
range of about ``ROWS`` rows, writing its parquet part to ``PART``, and prints
JSON: rows, peak bytes above the process's footprint before the task, the
part's bytes on disk, seconds. Measured as :mod:`benchmarks.chunk_memory` does
(a fresh process, RSS high-water mark reset through ``/proc/self/clear_refs``),
for the same reasons: Arrow keeps freed memory for reuse, and tracemalloc does
not see Arrow's buffers. The model is loaded before the mark is reset: a worker
holds it for every chunk, so it is no chunk's cost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.chunk_memory import peak_of
from benchmarks.common import TAXI
from pipeline.core.months import Month
from pipeline.edge import reader
from pipeline.edge.model_files import load_model
from pipeline.edge.predictions import score_chunk


def measure(folder: Path, month: Month, rows: int, model_dir: Path, part: Path) -> dict[str, float]:
    model = load_model(model_dir)
    plan = reader.locate(str(folder), TAXI, month, model.spec.columns())
    chunk = reader.plan(plan.layout, rows)[0]
    counts, peak, seconds = peak_of(lambda: score_chunk(plan, chunk, model, part))
    return {
        "rows": chunk.rows,
        "scored_rows": counts.rows,
        "peak_bytes": peak,
        "part_bytes": part.stat().st_size,
        "seconds": seconds,
    }


if __name__ == "__main__":
    folder, month, rows, model_dir, part = sys.argv[1:]
    print(json.dumps(measure(Path(folder), Month.parse(month), int(rows), Path(model_dir), Path(part))))
