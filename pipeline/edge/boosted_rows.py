"""The boosted model's chunk kernels: one row-group range of one month, read where it runs, as a partition or an error sum.

Each function reads its chunk through :func:`pipeline.edge.reader.read`, so the
distributed fit (``pipeline.flows.boosted``) gets its partitions made on the
workers and no row crosses the flow process. A :class:`Selection` keeps the rows of
some folds only, by the hash the linear CV uses (:func:`pipeline.core.hashing.fold_of`
of the row's position in its month file): the hold-out score is then on the same
rows the linear CV scores as that fold. No Prefect, no Dask.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.core import boosted, hashing
from pipeline.core.features import FeatureSpec
from pipeline.edge import reader


@dataclass(frozen=True)
class Selection:
    """The rows of fold ``fold`` of ``folds`` (``held_out``), or all the others: a K-fold split by row position."""

    folds: int
    fold: int
    seed: int
    held_out: bool

    def mask(self, month: reader.MonthPlan, position: np.ndarray) -> np.ndarray:
        fold = hashing.fold_of(position, hashing.month_salt(month.file.month), self.seed, self.folds)
        mask: np.ndarray = (fold == self.fold) if self.held_out else (fold != self.fold)
        return mask


#: Rows ``[start, stop)`` of a chunk (counted from the chunk's first row), or None: all of them.
Part = tuple[int, int] | None


def split(chunk: reader.Chunk, parts: int) -> list[Part]:
    """A chunk cut into ``parts`` row ranges of near-equal size (a month of one row group still spreads over the workers)."""
    if parts <= 1:
        return [None]
    edges = [chunk.rows * i // parts for i in range(parts + 1)]
    return [(start, stop) for start, stop in itertools.pairwise(edges) if stop > start]


def with_columns(plan: reader.MonthPlan, spec: FeatureSpec = boosted.SPEC) -> reader.MonthPlan:
    """``plan``, or the same file's plan with ``spec``'s columns when it was located for fewer (a linear spec's):
    the boosted model also reads ``trip_distance``. A footer read, milliseconds."""
    if set(spec.columns()) <= set(plan.layout.mapping):
        return plan
    return reader.MonthPlan(plan.file, reader.inspect(plan.layout.path, spec.columns()))


def chunk_rows(
    plan: reader.MonthPlan, chunk: reader.Chunk, spec: FeatureSpec = boosted.SPEC, select: Selection | None = None, part: Part = None
) -> boosted.Rows:
    """A chunk's (or a part of it's) kept rows as design and minutes; only the selected folds' rows with ``select``."""
    table, offset = reader.read(plan.layout, chunk), chunk.offset
    if part is not None:
        table, offset = table.slice(part[0], part[1] - part[0]), offset + part[0]
    rows = boosted.kept_rows(table, spec, offset=offset)
    return rows if select is None else rows.select(select.mask(plan, rows.position))


def chunk_frame(
    plan: reader.MonthPlan, chunk: reader.Chunk, spec: FeatureSpec = boosted.SPEC, select: Selection | None = None, part: Part = None
) -> pd.DataFrame:
    """One partition of the training collection: the design columns and :data:`pipeline.core.boosted.TARGET`."""
    return chunk_rows(plan, chunk, spec, select, part).frame()


def meta() -> pd.DataFrame:
    """An empty partition: the collection's column names and dtypes."""
    empty = np.empty(0, dtype=np.int64)
    return boosted.Rows(boosted.design(empty, empty, np.empty(0), empty), np.empty(0), empty).frame()


def chunk_error(
    plan: reader.MonthPlan, chunk: reader.Chunk, model: boosted.BoostedModel, select: Selection | None = None, part: Part = None
) -> tuple[int, float]:
    """Rows and squared-error sum of ``model`` on a chunk's kept (selected) rows: validation without moving rows."""
    rows = chunk_rows(plan, chunk, model.spec, select, part)
    error = boosted.predict_booster(model.booster, rows.design, model.spec) - rows.minutes
    return rows.rows, float(error @ error)


def load(plans: Sequence[reader.MonthPlan], spec: FeatureSpec = boosted.SPEC, select: Selection | None = None) -> boosted.Rows:
    """Every chunk of the months, in one process: the single-process reference's rows (tests, benchmarks)."""
    parts = [chunk_rows(plan, chunk, spec, select) for plan in plans for chunk in reader.plan(plan.layout, 1 << 62)]
    design = pd.concat([p.design for p in parts], ignore_index=True)
    return boosted.Rows(design, np.concatenate([p.minutes for p in parts]), np.concatenate([p.position for p in parts]))


def model_rmse(model: boosted.BoostedModel, plan: reader.MonthPlan, chunk_rows_: int = 1_000_000) -> float:
    """RMSE of a boosted model on a month's kept rows, chunk by chunk here (a champion that statistics cannot score).

    A plan located for another model's columns (a linear challenger without ``trip_distance``) has its footer read again.
    """
    plan = with_columns(plan, model.spec)
    sums = [chunk_error(plan, chunk, model) for chunk in reader.plan(plan.layout, chunk_rows_)]
    rows, sse = sum(n for n, _ in sums), sum(s for _, s in sums)
    return float(np.sqrt(sse / rows)) if rows else float("nan")
