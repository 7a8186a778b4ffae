"""The kernel: one row-group range of one month file, read and encoded, as statistics or rows.

Every path that reads trips goes through :func:`pipeline.edge.reader.read`: the
flows wrap :func:`chunk_statistics` (screened straight into statistics) in a task,
row-fitted estimators gather :func:`load_rows` (through :func:`read_encoded`), and
the benchmarks time the same functions with no Prefect imported. Folds and samples come from :mod:`pipeline.core.hashing` of the row's
position in its month file, so they do not depend on the chunking.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from pipeline.core import hashing, stats
from pipeline.core.features import N_ZONES, Encoded, FeatureSpec, encode, factor_codes, numeric_matrix, screen
from pipeline.core.rows import Rows, concat_rows
from pipeline.edge import reader
from pipeline.edge.stats_cache import StatsCache

#: Bump when the statistics' layout or meaning changes, so old cache entries stop matching.
# v3: Stats.screened, the rows read and dropped; v4: factor levels; v5: dropped_by_duration of good rows; v6: packed entries
STATS_VERSION = "stats-v6"

#: Rows per read (whole row groups) when gathering rows: a read's temporaries, not the kept
#: rows, set the peak memory of a subsampled load (1.2M rows kept 100k: +120 MB at 100k a
#: read, +300 MB at 1M).
READ_ROWS = 250_000


def read_encoded(plan: reader.MonthPlan, chunk: reader.Chunk, spec: FeatureSpec) -> Encoded:
    """The chunk's kept rows, encoded; ``position`` counts from the start of the month file."""
    return encode(reader.read(plan.layout, chunk), spec, plan.file.month, offset=chunk.offset)


def folds_of(plan: reader.MonthPlan, encoded: Encoded, folds: int, seed: int) -> np.ndarray:
    """Each row's fold; all 0 without cross-validation."""
    if folds < 2:
        return np.zeros(encoded.rows, dtype=np.int64)
    return hashing.fold_of(encoded.position, hashing.month_salt(plan.file.month), seed, folds)


def chunk_statistics(plan: reader.MonthPlan, chunk: reader.Chunk, spec: FeatureSpec, folds: int = 1, seed: int = 0) -> stats.Packed:
    """Read one row-group range and reduce it to (per-fold) statistics, packed (as they travel), with no kept-row arrays
    in between."""
    table = reader.read(plan.layout, chunk)
    fold = None
    if folds > 1:
        position = np.arange(chunk.offset, chunk.offset + table.num_rows, dtype=np.int64)
        fold = hashing.fold_of(position, hashing.month_salt(plan.file.month), seed, folds)
    x = numeric_matrix(table, spec.numeric) if spec.numeric else None
    levels = stats.Levels(factor_codes(table, spec), tuple(f.levels for f in spec.factors)) if spec.factors else None
    return stats.compute_screened(screen(table, spec, plan.file.month), table.num_rows, fold, folds, x, levels)


def cache_key(plan: reader.MonthPlan, chunk: reader.Chunk, spec: FeatureSpec, folds: int = 1, seed: int = 0) -> str:
    """A chunk's statistics depend only on the file's content version, its row groups and the options.

    The file identity (size + mtime locally, the ETag remotely) changes when the
    month is rewritten, so a stale entry is never used; hashing the inputs
    instead would mean pickling them on every call.
    """
    key = [STATS_VERSION, plan.file.location, plan.file.identity, chunk.first, chunk.stop, spec.to_dict(), folds, seed]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cached_statistics(
    location: str | None, plan: reader.MonthPlan, chunk: reader.Chunk, spec: FeatureSpec, folds: int = 1, seed: int = 0
) -> tuple[stats.Packed, bool]:
    """:func:`chunk_statistics` through the statistics cache at ``location`` (None: no cache), and whether it was a hit.

    A miss computes and stores the entry, so the next run with the same file and options reads it instead.
    """
    if location is None:
        return chunk_statistics(plan, chunk, spec, folds, seed), False
    cache, key = StatsCache(location), cache_key(plan, chunk, spec, folds, seed)
    hit = cache.get(key)
    if hit is not None:
        return hit, True
    computed = chunk_statistics(plan, chunk, spec, folds, seed)
    cache.put(key, computed)
    return computed, False


def load_rows(
    plans: Sequence[reader.MonthPlan],
    spec: FeatureSpec,
    folds: int,
    seed: int,
    max_rows: int | None,
    *,
    chunk_rows: int = READ_ROWS,
) -> Rows:
    """Read and encode every month, with fold ids; at most ``max_rows`` rows, a uniform sample.

    Folds match the statistics path row for row. The sample keeps the
    ``max_rows`` rows with the smallest :func:`pipeline.core.hashing.sample_key`:
    the same subset (in file order) for any ``chunk_rows``. Chunks are thinned
    as they arrive, so memory stays near ``max_rows`` rows plus one chunk.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    k = len(spec.numeric)
    kept: list[Rows] = []
    keys: list[np.ndarray] = []
    threshold = np.uint64((1 << 64) - 1)  # the largest key kept so far, once max_rows are held
    for plan in plans:
        for chunk in reader.plan(plan.layout, chunk_rows):
            encoded = read_encoded(plan, chunk, spec)
            pu, do = np.divmod(encoded.pair, N_ZONES)
            part = Rows(pu, do, encoded.x, encoded.y, folds_of(plan, encoded, folds, seed))
            if max_rows is None:
                kept.append(part)
                continue
            key = hashing.sample_key(encoded.position, hashing.month_salt(plan.file.month), seed)
            below = key <= threshold
            kept.append(part.select(below))
            keys.append(key[below])
            if sum(p.rows for p in kept) > max_rows:
                all_keys = np.concatenate(keys)
                threshold = np.partition(all_keys, max_rows - 1)[max_rows - 1]
                keep = all_keys <= threshold
                kept, keys = [concat_rows(kept, k).select(keep)], [all_keys[keep]]
    return concat_rows(kept, k)
