"""Which files made a model: each month file's location, size, content identity and statistics cache keys.

The second seed versions its data with DVC; here a run's month files are already
named by content (size + mtime locally, the ETag remotely, :mod:`pipeline.edge.sources`),
and their chunks' statistics by :func:`pipeline.edge.chunks.cache_key`, so recording
both beside the model tells a user exactly which data made the champion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.core.features import FeatureSpec
from pipeline.core.months import Month
from pipeline.core.results import DataInput
from pipeline.edge import chunks, reader


def data_inputs(
    plans: Mapping[Month, reader.MonthPlan],
    train: Sequence[Month],
    val: Month,
    spec: FeatureSpec | None,
    chunk_rows: int,
    folds: int = 1,
    seed: int = 0,
) -> tuple[DataInput, ...]:
    """The run's month files, training months first; ``spec`` None: a path that keeps no statistics (row-fitted models)."""
    out = []
    for month in [*train, val]:
        plan = plans[month]
        keys: tuple[str, ...] = ()
        if spec is not None:
            month_folds = folds if month != val else 1  # as the statistics tasks count them
            keys = tuple(chunks.cache_key(plan, c, spec, month_folds, seed) for c in reader.plan(plan.layout, chunk_rows))
        role = "validation" if month == val else "train"
        size = plan.layout.path.stat().st_size
        out.append(DataInput(role, str(month), plan.file.location, size, plan.file.identity, keys))
    return tuple(out)
