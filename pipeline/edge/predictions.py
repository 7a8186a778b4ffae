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

import json
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.boosted import BoostedModel
from pipeline.core.features import MICROS_PER_MINUTE, N_ZONES, factor_codes, numeric_matrix, training_rows
from pipeline.core.model import AnyModel
from pipeline.core.monitoring import MonthCounts
from pipeline.core.months import Month
from pipeline.core.schema import DO, PICKUP, PU
from pipeline.edge import reader, storage
from pipeline.edge.storage import Location, Where
from pipeline.errors import PipelineError

#: A local staging folder without its mark and untouched this long (seconds) is a discarded run's,
#: a part of a chunk that outlived the discard in it; a younger one may be a discard still under way.
UNMARKED_AFTER = 60.0
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
    a worker writes nothing, instead of leaving a part behind. The mark names the run's
    process, so a later run can tell a staging whose run was killed (:func:`remove_leftovers`).
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

    def open(self, months: Iterable[Month], run: str) -> None:
        """The mark, naming ``run``'s process, then the months' folders (locally; object stores have none).

        Mark first: a staging without one is then never a run's that is still opening.
        """
        storage.put(self.mark, storage.owner_document(run))
        for month in months:
            folder = self.month(month).path
            if folder is not None:
                folder.mkdir(exist_ok=True)

    def abandoned(self) -> bool:
        """Its run is gone: the mark names a process of this host that has ended, or (discarded) there is no mark."""
        try:
            document = json.loads(storage.read_bytes(self.mark))
        except FileNotFoundError:
            path = self.root.path
            try:
                return path is None or time.time() - path.stat().st_mtime > UNMARKED_AFTER
            except FileNotFoundError:  # its run's discard just finished
                return False
        except ValueError:  # not a mark this version writes: left alone
            return False
        return storage.owner_gone(self.mark, document)

    def discard(self) -> None:
        """The mark first (no part is written after it), then everything staged; published months are not here.

        A chunk that found the mark just before it went may still be writing its part. Locally the folder
        is therefore renamed aside first, atomically, then removed: that part's path no longer exists, so its
        write fails instead of landing in a folder being removed (a part made after ``rmtree`` listed its
        folder kept the staging in the output: a Ctrl-C test failed so once under load).
        """
        storage.delete(self.mark)
        path = self.root.path
        if path is None:  # object storage: no rename; a late part is removed by a later run (remove_leftovers)
            storage.delete_tree(self.root)
            return
        aside = path.with_name(f"{path.name}-discarded-{uuid.uuid4().hex[:8]}")  # still ".staging-*": a leftover of it goes too
        try:
            path.rename(aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)


#: How a month's old parts are named while a swap moves them aside: ``.old-HEX-month=2023-04``.
_ASIDE = ".old-"


def _aside(month: Path) -> Path:
    return month.with_name(f"{_ASIDE}{uuid.uuid4().hex}-{month.name}")


def remove_leftovers(output: Where) -> list[str]:
    """Clear what stopped or killed runs left in ``output``; a line for each thing done.

    A staging whose run is gone (killed before it could discard it, or written into by a
    chunk that outlived the discard) is removed. A month's old parts that a killed swap had
    moved aside (``.old-*``, local only) are removed if the new month is in, and put back if
    it is not: the month is then as it was before that run. Runs still going are left alone.
    """
    root = storage.locate(output)
    done = []
    for name in storage.listdir(root):
        where = root.child(name)
        if name.startswith(".staging-") and Staging(where).abandoned():
            storage.delete_tree(where)
            done.append(f"removed {name}")
        elif name.startswith(_ASIDE) and where.path is not None:
            month = where.path.with_name(name.split("-", 2)[-1])  # what _aside named it from
            if month.exists():
                shutil.rmtree(where.path, ignore_errors=True)
                done.append(f"removed {name}")
            else:
                where.path.rename(month)
                done.append(f"put {name} back as {month.name}")
    return done


def score_chunk(
    plan: reader.MonthPlan, chunk: reader.Chunk, model: AnyModel, part: Location, staging: Staging | None = None
) -> MonthCounts:
    """Predict every row of a chunk, write them as one parquet part (atomically), return the month's counts.

    In a run's ``staging``, the part is written only while the staging is open (see :class:`Staging`).
    """
    table = reader.read(plan.layout, chunk)
    rows = training_rows(table, model.spec)
    if isinstance(model, BoostedModel):  # its design needs the pickup time too
        predicted = model.predict_table(table)
    else:
        predicted = model.predict_codes(rows.pu, rows.do, numeric_matrix(table, model.spec.numeric), factor_codes(table, model.spec))
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
    old = _aside(final.path)
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
