"""Month parquet files: check them up front, plan row-group chunks, read one chunk.

Work is chunked by parquet row groups, so no task holds more than a bounded
slice of a month, whatever the month's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import DEFAULT_HTTP_TIMEOUT, TrainConfig
from pipeline.core.months import Month
from pipeline.core.schema import column_mapping, normalize
from pipeline.edge.sources import MonthFile, is_local, resolve_month
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Chunk:
    """Row groups ``[first, stop)`` of one file, starting at row ``offset``."""

    first: int
    stop: int
    offset: int
    rows: int


@dataclass(frozen=True)
class Layout:
    """What a month file holds: its column mapping and row-group sizes."""

    path: Path
    mapping: dict[str, str]
    group_rows: tuple[int, ...]

    @property
    def rows(self) -> int:
        return sum(self.group_rows)


def _one_line(exc: BaseException) -> str:
    """Arrow's messages run over several lines; the user gets one."""
    return " ".join(str(exc).split())


def _open(path: Path) -> pq.ParquetFile:
    """Open with page CRC verification: a damaged page of a file that has CRCs fails its read (files without read as before)."""
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # a damaged column name fails to decode
        raise PipelineError(f"{path}: corrupt or unreadable parquet file ({_one_line(exc)})") from None


def inspect(path: Path, columns: Sequence[str]) -> Layout:
    """Read the footer: required columns present, row groups counted."""
    meta = _open(path).metadata
    mapping = column_mapping(meta.schema.to_arrow_schema(), columns, where=str(path))
    rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return Layout(path=path, mapping=mapping, group_rows=rows)


def plan(layout: Layout, target_rows: int) -> list[Chunk]:
    """Contiguous row-group ranges of about ``target_rows`` rows each (at least one group)."""
    chunks: list[Chunk] = []
    first, offset, rows = 0, 0, 0
    for index, size in enumerate(layout.group_rows):
        rows += size
        if rows >= target_rows or index == len(layout.group_rows) - 1:
            chunks.append(Chunk(first, index + 1, offset, rows))
            first, offset, rows = index + 1, offset + rows, 0
    return chunks


def read(layout: Layout, chunk: Chunk) -> pa.Table:
    """The chunk's columns in canonical names and types."""
    where = str(layout.path)
    try:
        table = _open(layout.path).read_row_groups(list(range(chunk.first, chunk.stop)), columns=list(layout.mapping.values()))
    except PipelineError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise PipelineError(f"{where}: corrupt parquet data in row groups {chunk.first}..{chunk.stop - 1} ({_one_line(exc)})") from None
    return normalize(table, layout.mapping, where)


@dataclass(frozen=True)
class MonthPlan:
    """A month's file on local disk and its row-group layout."""

    file: MonthFile
    layout: Layout


def locate(
    source: str, taxi: str, month: Month, columns: Sequence[str], cache_dir: Path | None = None, timeout: float = DEFAULT_HTTP_TIMEOUT
) -> MonthPlan:
    """Bring the month's file to local disk (if remote) and check its footer."""
    file = resolve_month(source, taxi, month, cache_dir=cache_dir, timeout=timeout)
    return MonthPlan(file, inspect(file.path, columns))


def label(plan: MonthPlan) -> str:
    """How messages name a month: ``month 2023-03 (path or URL)``."""
    return f"month {plan.file.month} ({plan.file.location})"


def locate_local(config: TrainConfig) -> list[MonthPlan] | None:
    """Plans of a run's months when they are local files, else None.

    Called once before any server or worker starts, so bad input fails in a
    second, and the plans are handed to the flow (footers are read once).
    Remote months are fetched and checked by the flow's locate tasks instead, with retries.
    """
    if not is_local(config.source):
        return None
    train, val = config.months()
    columns = config.feature_spec().columns()
    return [locate(config.source, config.taxi, month, columns, config.cache_dir, config.http_timeout) for month in [*train, val]]
