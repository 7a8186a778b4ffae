"""A new worker's first chunk runs the statistics path on a tiny file first, while the run's Prefect API starts.

In a fresh process the first parquet read costs ~0.2 s more than the next
(Arrow's codecs and thread pools start): a 4,096-row read took 0.23 s, and the
month after it read at full speed. :func:`warm_up` pays that on a tiny file in
each codec the month files come in, through the same functions a chunk task
calls. (A run of its own still finds its first chunks slow, 0.7-1 s against
0.35 s, while its new Prefect API is busy on the same cores: not this.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.features import FeatureSpec
from pipeline.core.months import Month
from pipeline.edge import chunks, reader
from pipeline.edge.sources import MonthFile

_ROWS = 4096
_CODECS = ("snappy", "zstd")  # the generated months' and the TLC files'


def _trips() -> pa.Table:
    rng = np.random.default_rng(0)
    pickup = np.datetime64("2023-01-01", "us") + rng.integers(0, 30 * 86_400, _ROWS).astype("timedelta64[s]")
    return pa.table(
        {
            "tpep_pickup_datetime": pickup,
            "tpep_dropoff_datetime": pickup + rng.integers(60, 3600, _ROWS).astype("timedelta64[s]"),
            "PULocationID": rng.integers(1, 266, _ROWS),
            "DOLocationID": rng.integers(1, 266, _ROWS),
        }
    )


def warm_up() -> None:
    """Write, read and reduce a tiny month (5 folds) in each codec; a Dask worker runs it once, at its start."""
    spec, month, trips = FeatureSpec(), Month(2023, 1), _trips()
    with tempfile.TemporaryDirectory(prefix="taxi-pipeline-warm-") as folder:
        for codec in _CODECS:
            path = Path(folder) / f"{codec}.parquet"
            pq.write_table(trips, path, compression=codec, write_page_checksum=True)
            layout = reader.inspect(path, spec.columns())
            plan = reader.MonthPlan(MonthFile("yellow", month, str(path), path, codec), layout)
            for chunk in reader.plan(layout, _ROWS):
                chunks.chunk_statistics(plan, chunk, spec, folds=5)
