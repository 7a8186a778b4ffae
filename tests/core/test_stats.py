import numpy as np
import pytest

from pipeline.core import hashing, stats
from pipeline.core.features import N_ZONES, Encoded


def _enc(rows, seed, numeric=1):
    rng = np.random.default_rng(seed)
    return Encoded(
        pair=rng.integers(1, 266, rows) * N_ZONES + rng.integers(1, 266, rows),
        micros=rng.integers(60_000_000, 3_600_000_000, rows),
        x=rng.normal(size=(rows, numeric)),
        position=np.arange(rows),
    )


def _slice(enc, a, b):
    return Encoded(enc.pair[a:b], enc.micros[a:b], enc.x[a:b], enc.position[a:b])


def test_statistics_add_across_chunks():
    enc = _enc(10_000, 0)
    whole = stats.compute(enc)
    parts = stats.compute(_slice(enc, 0, 3_000)) + stats.compute(_slice(enc, 3_000, 10_000))
    # target statistics are exact: equal to the bit, whatever the split
    assert np.array_equal(whole.count, parts.count)
    assert np.array_equal(whole.sum_micros, parts.sum_micros)
    assert whole.sum_micros2[0] == parts.sum_micros2[0] == sum(int(v) ** 2 for v in enc.micros)
    np.testing.assert_allclose(whole.sum_x, parts.sum_x, rtol=1e-12)
    assert whole.rows == 10_000
    assert whole.sum_yy[0] == pytest.approx(np.sum(enc.y**2), rel=1e-12)


def test_fold_assignment_is_balanced_deterministic_and_chunking_free():
    position = np.arange(200_000)
    folds = hashing.fold_of(position, salt=2023 * 12, seed=7, folds=5)
    assert np.array_equal(folds, hashing.fold_of(position, salt=2023 * 12, seed=7, folds=5))
    counts = np.bincount(folds, minlength=5)
    assert counts.min() > 0.19 * position.size and counts.max() < 0.21 * position.size
    # a chunk at an offset gets the same folds as the same rows in one piece
    assert np.array_equal(hashing.fold_of(position[50_000:60_000], 2023 * 12, 7, 5), folds[50_000:60_000])
    assert not np.array_equal(folds, hashing.fold_of(position, salt=2023 * 12, seed=8, folds=5))


def test_per_fold_statistics_partition_the_total():
    enc = _enc(20_000, 1, numeric=2)
    fold = hashing.fold_of(enc.position, salt=1, seed=0, folds=4)
    per_fold = stats.compute(enc, fold, folds=4)
    pooled = stats.compute(enc)
    for a, b in zip(per_fold.total()._arrays(), pooled._arrays()):
        np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-12, atol=1e-9)
    assert per_fold.total().sum_micros2[0] == pooled.sum_micros2[0]
    held = per_fold.fold(2)
    assert held.rows == int(np.sum(fold == 2))
    assert per_fold.without(2).rows == enc.rows - held.rows


def test_adding_mismatched_statistics_fails():
    with pytest.raises(ValueError):
        stats.empty(folds=1) + stats.empty(folds=2)


def test_rows_read_and_dropped_add_across_chunks_and_survive_fold_selections():
    def counted(seed, screened):
        enc = _enc(1_000, seed)
        return Encoded(enc.pair, enc.micros, enc.x, enc.position, np.array(screened, dtype=np.int64))

    folds = 3
    parts = [counted(0, [1_030, 20, 11, 2]), counted(1, [1_010, 7, 3, 0])]
    total = stats.combine([stats.compute(p, hashing.fold_of(p.position, 0, 0, folds), folds) for p in parts])
    assert total.screened.tolist() == [2_040, 27, 14, 2]
    assert total.rows == 2_000
    for selected in (total.total(), total.fold(1), total.without(1), total.select([])):
        assert selected.screened.tolist() == [2_040, 27, 14, 2]
    assert stats.empty().screened.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("folds", [1, 4])
@pytest.mark.parametrize("sizes", [(7,), (5, 9), (3, 4, 6)])
def test_factor_statistics_equal_their_definition_row_by_row(folds, sizes):
    """Counts per level and pair, per two levels, and the per-level sums, against ``np.add.at`` over every row."""
    rows, k = 20_000, 2
    rng = np.random.default_rng(len(sizes) * 10 + folds)
    enc = _enc(rows, folds, numeric=k)
    enc = Encoded(rng.integers(1, 40, rows) * N_ZONES + rng.integers(1, 30, rows), enc.micros, enc.x, enc.position)
    codes = np.column_stack([rng.integers(0, size, rows) + offset for size, offset in zip(sizes, np.cumsum((0, *sizes[:-1])))])
    fold = hashing.fold_of(enc.position, salt=3, seed=1, folds=folds) if folds > 1 else np.zeros(rows, dtype=np.int64)
    got = stats.compute(enc, fold if folds > 1 else None, folds, stats.Levels(codes.astype(np.int32), sizes))

    total = sum(sizes)
    pairs = np.unique(enc.pair)
    cross = np.zeros((folds, total, pairs.size), dtype=np.int64)
    level_pairs = np.zeros((folds, total, total), dtype=np.int64)
    level_micros = np.zeros((folds, total), dtype=np.int64)
    level_x = np.zeros((folds, total, k))
    column = np.searchsorted(pairs, enc.pair)
    for j in range(len(sizes)):
        np.add.at(cross, (fold, codes[:, j], column), 1)
        np.add.at(level_micros, (fold, codes[:, j]), enc.micros)
        np.add.at(level_x, (fold, codes[:, j]), enc.x)
        for i in range(len(sizes)):
            np.add.at(level_pairs, (fold, codes[:, j], codes[:, i]), 1)
    assert np.array_equal(got.cross_pairs, pairs)
    assert np.array_equal(got.cross, cross)
    assert np.array_equal(got.level_pairs, level_pairs)
    assert np.array_equal(got.level_micros, level_micros)
    np.testing.assert_allclose(got.level_x, level_x, rtol=1e-12)
    # and the same from two chunks added: the union of their pairs
    halves = [slice(0, rows // 3), slice(rows // 3, rows)]
    parts = [
        stats.compute(_slice(enc, h.start, h.stop), fold[h] if folds > 1 else None, folds, stats.Levels(codes[h].astype(np.int32), sizes))
        for h in halves
    ]
    summed = stats.combine([parts[0].pack(), parts[1]])
    assert np.array_equal(summed.cross_pairs, pairs) and np.array_equal(summed.cross, cross)
    assert np.array_equal(summed.level_pairs, level_pairs)


def _equal(a: stats.Stats, b: stats.Stats) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a._arrays(), b._arrays())) and (
        np.array_equal(a.cross, b.cross) and np.array_equal(a.cross_pairs, b.cross_pairs) and np.array_equal(a.screened, b.screened)
    )


@pytest.mark.parametrize("folds", [1, 3])
def test_packed_statistics_give_their_folds_total_and_selections_as_unpacked_ones_do(folds):
    rows, sizes = 5_000, (4, 6)
    rng = np.random.default_rng(folds)
    enc = _enc(rows, folds, numeric=2)
    codes = np.column_stack([rng.integers(0, 4, rows), 4 + rng.integers(0, 6, rows)]).astype(np.int32)
    fold = hashing.fold_of(enc.position, salt=1, seed=2, folds=folds) if folds > 1 else None
    whole = stats.compute(enc, fold, folds, stats.Levels(codes, sizes))
    packed = whole.pack()
    assert _equal(packed.total(), whole.total()) and packed.total().cross.shape == (1, 10, whole.cross_pairs.size)
    for k in range(folds):
        assert _equal(packed.fold(k), whole.fold(k))
    assert packed.select([0, 1], range(10)) is packed  # everything: still packed
    assert _equal(packed.select([1], [0, 2, 7]), whole.select([1], [0, 2, 7]))
    # packed only when that is smaller: 10 levels x the pairs of 5,000 rows is mostly zeros, 1 level x 3 pairs is not
    assert isinstance(stats.compact(whole), stats.Packed) and _equal(stats.compact(whole).unpack(), whole)
    few = Encoded(np.array([300, 301, 302] * 10), enc.micros[:30], enc.x[:30], enc.position[:30])
    dense = stats.compute(few, None, 1, stats.Levels(np.zeros((30, 1), dtype=np.int32), (1,)))
    assert stats.compact(dense) is dense


@pytest.mark.parametrize("block_cells", [1, 37, 1 << 20], ids=["a row a block", "rows across blocks", "one block"])
@pytest.mark.parametrize("folds", [1, 3])
def test_packed_parts_add_up_block_by_block_to_the_dense_sum(monkeypatch, folds, block_cells):
    """add_packed places each part's cells by its own pairs, a block of rows at a time: the same statistics, to the
    bit, as adding the parts spread and packing the sum; pool spreads the sum when that is smaller, as compact does."""
    monkeypatch.setattr(stats, "_ADD_BLOCK_CELLS", block_cells)
    sizes = (4, 6)
    parts = []
    for seed, rows in enumerate([3_000, 1, 2_000]):  # different pairs each, one of a single row
        rng = np.random.default_rng(seed)
        enc = _enc(rows, seed, numeric=2)
        codes = np.column_stack([rng.integers(0, 4, rows), 4 + rng.integers(0, 6, rows)]).astype(np.int32)
        fold = hashing.fold_of(enc.position, salt=seed, seed=2, folds=folds) if folds > 1 else None
        parts.append(stats.compute(enc, fold, folds, stats.Levels(codes, sizes)))
    expected = stats.combine(parts).pack()
    got = stats.add_packed([p.pack() for p in parts])
    assert np.array_equal(got.pairs, expected.pairs) and _equal(got.rest, expected.rest)
    assert got.cells.dtype == expected.cells.dtype and np.array_equal(got.cells, expected.cells)
    assert got.counts.dtype == expected.counts.dtype and np.array_equal(got.counts, expected.counts)
    pooled = stats.pool([parts[0], parts[1].pack(), parts[2].pack()])  # whole and packed parts alike
    assert isinstance(pooled, stats.Packed) and _equal(pooled.unpack(), stats.combine(parts))
    few = Encoded(np.array([300, 301, 302] * 10), np.full(30, 60_000_000), np.zeros((30, 2)), np.arange(30))
    dense = stats.compute(few, None, 1, stats.Levels(np.zeros((30, 1), dtype=np.int32), (1,)))
    spread = stats.pool([dense.pack(), dense.pack()])
    assert isinstance(spread, stats.Stats) and _equal(spread, stats.combine([dense, dense]))
