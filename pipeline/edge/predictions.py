"""Batch scoring output: one parquet part per chunk, a month's parts swapped in whole.

Layout: ``OUT/month=2023-04/part-00000.parquet``, one part per row-group chunk,
so no task holds more than a chunk. Every input row gets a row out, with the
trip's identity (pickup time, zones), ``predicted_minutes``, the actual
``duration_minutes`` (null where a timestamp is) and ``in_training_range``
(the rows training keeps), so predictions on rows the model was never trained
for are there to compare. A run writes a month's parts into a staging folder
and swaps it in when all are written: a reader sees the old month or the new
one, never a mix of parts.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.features import MICROS_PER_MINUTE, N_ZONES, numeric_matrix, training_rows
from pipeline.core.model import AnyModel
from pipeline.core.monitoring import MonthCounts
from pipeline.core.months import Month
from pipeline.core.schema import DO, PICKUP, PU
from pipeline.edge import reader, storage
from pipeline.edge.storage import Location, Where
from pipeline.errors import PipelineError

#: How a part is written. Uncompressed: the float columns barely compress (snappy takes a 1M-row
#: part from 26 to 19 MB) and compressing them doubled a part's write, the largest cost of
#: scoring (82 against 38 ms per 1M rows; reading the month's columns is ~26 ms). The zones,
#: 265 values, are dictionary-encoded (a byte a row), and only the pickup time keeps
#: statistics, for readers that filter by time.
PART_OPTIONS: dict[str, object] = {"compression": "none", "use_dictionary": [PU, DO], "write_statistics": [PICKUP]}


def month_folder(output: Where, month: Month) -> Location:
    return storage.locate(output).child(f"month={month}")


@dataclass(frozen=True)
class Staging:
    """One run's staging folder, ``OUT/.staging-RUN/month=YYYY-MM/``, where parts wait to be published.

    Parts are written only while its ``.open`` mark is there, and (locally) into folders made
    when it was opened: once a stopped or failed run discards it, a chunk still running on
    a worker writes nothing, instead of leaving a part behind.
    """

    root: Location

    @classmethod
    def of(cls, output: Where, run: str) -> Staging:
        return cls(storage.locate(output).child(f".staging-{run}"))

    @property
    def mark(self) -> Location:
        return self.root.child(".open")

    def month(self, month: Month) -> Location:
        return self.root.child(f"month={month}")

    def open(self, months: Iterable[Month]) -> None:
        """Make the months' folders (locally; object stores have none) and the mark."""
        for month in months:
            folder = self.month(month).path
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        storage.put(self.mark, b"")

    def discard(self) -> None:
        """The mark first (no part is written after it), then everything staged; published months are not here."""
        storage.delete(self.mark)
        storage.delete_tree(self.root)


def score_chunk(
    plan: reader.MonthPlan, chunk: reader.Chunk, model: AnyModel, part: Location, staging: Staging | None = None
) -> MonthCounts:
    """Predict every row of a chunk, write them as one parquet part (atomically), return the month's counts.

    In a run's ``staging``, the part is written only while the staging is open (see :class:`Staging`).
    """
    table = reader.read(plan.layout, chunk)
    rows = training_rows(table, model.spec)
    x = numeric_matrix(table, model.spec.numeric)
    predicted = model.predict_codes(rows.pu, rows.do, x)
    minutes = rows.micros / MICROS_PER_MINUTE
    out = pa.table(
        {
            PICKUP: table.column(PICKUP),
            PU: table.column(PU),
            DO: table.column(DO),
            "predicted_minutes": pa.array(predicted, pa.float64()),
            "duration_minutes": pa.array(minutes, pa.float64(), mask=~rows.valid),
            "in_training_range": pa.array(rows.keep, pa.bool_()),
        }
    )
    buffer = pa.BufferOutputStream()  # grows without BytesIO's copy out
    pq.write_table(out, buffer, **PART_OPTIONS)
    if staging is not None and not storage.exists(staging.mark):
        raise PipelineError(f"{part}: not written: its run was stopped")
    storage.put(part, memoryview(buffer.getvalue()), parents=staging is None)
    keep = rows.keep
    error = predicted[keep] - minutes[keep]
    pair = np.bincount(rows.pu[keep] * N_ZONES + rows.do[keep], minlength=N_ZONES * N_ZONES)
    return MonthCounts(int(table.num_rows), int(keep.sum()), float(error @ error), float(error.sum()), pair)


def publish_month(staged: Location, final: Location) -> None:
    """Swap a month's staged parts in for its folder: the old parts go whole, the new arrive whole."""
    if final.remote:
        _publish_remote(staged, final)
        return
    assert staged.path is not None and final.path is not None
    if final.path.exists() and not final.path.is_dir():
        raise PipelineError(f"{final}: exists and is not a folder")
    old = final.path.with_name(f".old-{uuid.uuid4().hex}-{final.name}")
    if final.path.exists():
        final.path.rename(old)
    staged.path.rename(final.path)
    shutil.rmtree(old, ignore_errors=True)


def _publish_remote(staged: Location, final: Location) -> None:
    """Object storage: copy each staged part in (server side), then delete the old parts it did not replace."""
    new, old = storage.listdir(staged), storage.listdir(final)
    for name in new:
        storage.copy(staged.child(name), final.child(name))
    for name in sorted(set(old) - set(new)):
        storage.delete(final.child(name))
    storage.delete_tree(staged)


def check_output(output: Where) -> None:
    """An output that exists as a file is refused, and a remote one that cannot be reached fails, before anything runs."""
    where = storage.locate(output)
    if where.path is not None and where.path.exists() and not where.path.is_dir():
        raise PipelineError(f"--output {output}: exists and is not a folder")
    storage.probe(where)
