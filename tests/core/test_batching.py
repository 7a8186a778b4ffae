"""Packing small months into shared tasks: order kept, every item once, limits held, every slot fed."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core import batching


@given(st.lists(st.integers(min_value=1, max_value=100), max_size=40), st.integers(min_value=1, max_value=150))
def test_pack_covers_every_item_once_in_order_within_the_limit(rows, limit):
    batches = batching.pack(rows, limit)
    assert [i for batch in batches for i in batch] == list(range(len(rows)))
    for batch in batches:
        assert len(batch) == 1 or sum(rows[i] for i in batch) <= limit
    for before, after in itertools.pairwise(batches):  # greedy: the next item did not fit
        assert sum(rows[i] for i in before) + rows[after[0]] > limit


def test_target_is_the_task_size_or_a_share_per_slot():
    assert batching.target([20_000] * 60, chunk_rows=4_000_000, slots=2) == 600_000
    assert batching.target([20_000] * 60, chunk_rows=100_000, slots=2) == 100_000
    assert batching.target([], chunk_rows=100, slots=4) == 1
    assert len(batching.pack([20_000] * 60, batching.target([20_000] * 60, 4_000_000, 2))) == 2
