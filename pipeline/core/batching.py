"""How small work items share a task: a Prefect task on Dask costs tens of ms, so a task per 20k-row month costs more than its work.

Items (months of one chunk each) are packed in their order into batches of at
most ``target`` rows; an item larger than the target is a batch of its own. The
target is the task size the user chose (``chunk_rows``), lowered so that there
are at least as many batches as worker slots when the work allows it: a batch
per slot keeps every worker busy.

>>> pack([20, 20, 20, 50, 10], 40)
[range(0, 2), range(2, 3), range(3, 4), range(4, 5)]
>>> target(rows=[20_000] * 60, chunk_rows=4_000_000, slots=2)
600000
"""

from __future__ import annotations

from collections.abc import Sequence


def target(rows: Sequence[int], chunk_rows: int, slots: int) -> int:
    """Rows per batch: ``chunk_rows``, or less so that ``slots`` workers each get a share."""
    share = -(-sum(rows) // max(1, slots))
    return max(1, min(chunk_rows, share))


def pack(rows: Sequence[int], limit: int) -> list[range]:
    """Consecutive index ranges of ``rows`` whose sums stay within ``limit`` (an item above it alone)."""
    batches: list[range] = []
    start, total = 0, 0
    for index, size in enumerate(rows):
        if index > start and total + size > limit:
            batches.append(range(start, index))
            start, total = index, 0
        total += size
    if rows:
        batches.append(range(start, len(rows)))
    return batches
