"""CV from statistics equals refitting on each fold's rows, with no second pass."""

import numpy as np
import pytest

from pipeline.core import cv, hashing, solve, stats
from pipeline.core.features import N_ZONES, Encoded, FeatureSpec


def _encoded(rows: int, seed: int) -> Encoded:
    rng = np.random.default_rng(seed)
    pu, do = rng.integers(1, 30, rows), rng.integers(1, 30, rows)
    minutes = 10 + 0.3 * pu - 0.2 * do + ((pu * 3 + do) % 7) + rng.normal(size=rows)
    return Encoded(
        pair=pu * N_ZONES + do, micros=np.round(minutes * 60e6).astype(np.int64), x=np.empty((rows, 0)), position=np.arange(rows)
    )


def _subset(enc: Encoded, mask: np.ndarray) -> Encoded:
    return Encoded(enc.pair[mask], enc.micros[mask], enc.x[mask], enc.position[mask])


@pytest.mark.parametrize("alpha", [0.01, 1.0, 10.0])
def test_kfold_score_equals_a_refit_on_the_other_folds(alpha):
    enc = _encoded(20_000, seed=0)
    fold = hashing.fold_of(enc.position, salt=1, seed=3, folds=4)
    per_fold = stats.compute(enc, fold, folds=4)
    for k in range(4):
        score = cv.kfold_score(per_fold, k, alpha)
        refit = solve.solve(stats.compute(_subset(enc, fold != k)), alpha)
        held = stats.compute(_subset(enc, fold == k))
        assert score.rmse == pytest.approx(solve.rmse(refit, held), rel=1e-10)
        assert score.test_rows == int(np.sum(fold == k))
        assert score.train_rows + score.test_rows == enc.rows


def test_window_score_trains_on_earlier_months_only():
    months = [stats.compute(_encoded(5_000, seed=s)) for s in range(3)]
    score = cv.window_score(months[:2], months[2], fold=2, alpha=0.5)
    direct = solve.rmse(solve.solve(months[0] + months[1], 0.5), months[2])
    assert score.rmse == pytest.approx(direct, rel=1e-12)
    assert (score.train_rows, score.test_rows) == (10_000, 5_000)


def test_summary_and_choice():
    scores = [cv.CVScore(k, a, r, 90, 10, 0.0) for k in range(2) for a, r in ((0.1, 5.0 + k), (1.0, 4.0 + k), (10.0, 4.5))]
    summary = cv.summarize(scores)
    assert [(s.alpha, s.mean_rmse, s.std_rmse, s.folds) for s in summary] == [(0.1, 5.5, 0.5, 2), (1.0, 4.5, 0.5, 2), (10.0, 4.5, 0.0, 2)]
    assert cv.best_alpha(summary) == 1.0  # a tie goes to the smaller alpha
    report = cv.CVReport.of("kfold", scores, 1.0)
    assert report.folds == 2 and report.chosen_alpha == 1.0 and len(report.scores) == 6 and report.chose
    assert [(s.alpha, s.fold) for s in report.scores] == sorted((s.alpha, s.fold) for s in scores)


def test_a_groups_refits_are_fits_of_its_months_to_the_bit():
    """kfold_group refits from the months it added up once, projected: exactly what fitting each projected month gives."""
    from pipeline.core import training

    def with_numeric(seed: int) -> stats.Stats:
        enc = _encoded(6_000, seed)
        x = np.random.default_rng(seed).normal(size=(enc.rows, 2))
        enc = Encoded(enc.pair, enc.micros, x, enc.position)
        return stats.compute(enc, hashing.fold_of(enc.position, salt=seed, seed=3, folds=3), folds=3)

    months, val = [with_numeric(s) for s in range(3)], with_numeric(9)
    zones = ("PULocationID", "DOLocationID", "PU_DO")
    sets = training.FeatureSets(FeatureSpec.of((*zones, "a", "b")), [zones, (*zones, "b"), (*zones, "a", "b")])
    refits = [(features, alpha) for features in sets.options() for alpha in (0.1, 3.0)]
    _, candidates = training.kfold_group(stats.combine(months), [m.rows for m in months], val, [0], [0.1], refits, sets)
    assert [(c.features, c.alpha) for c in candidates] == refits
    for c in candidates:
        direct = training.fit([sets.project(m, c.features) for m in months], c.alpha)
        assert c.fit.rmse == direct.rmse and c.fit.month_rows == direct.month_rows
        assert c.fit.weights.intercept == direct.weights.intercept
        for field in ("pu", "do", "pair", "numeric"):
            assert np.array_equal(getattr(c.fit.weights, field), getattr(direct.weights, field))


@pytest.mark.parametrize("packed", [False, True], ids=["whole", "packed"])
@pytest.mark.parametrize("levels", [12, 400], ids=["dense-counts", "sparse-counts"])
def test_a_groups_folds_score_as_each_fold_prepared_on_its_own(levels, packed):
    """kfold_group refills one matrix fold after fold and scores on each fold's cells: every score is the one of the
    fold's own statistics (to the last bits: the held-out sums add up in another order)."""
    from pipeline.core import training

    enc = _encoded(30_000, seed=4)
    codes = np.random.default_rng(4).integers(0, levels, (enc.rows, 1)).astype(np.int32)
    fold = hashing.fold_of(enc.position, salt=2, seed=3, folds=5)
    pooled = stats.compute(enc, fold, folds=5, levels=stats.Levels(codes, (levels,)))
    filled = np.count_nonzero(pooled.total().cross) / pooled.total().cross.size
    assert (filled > solve.SPARSE_BELOW) == (levels == 12)
    scores, _ = training.kfold_group(pooled.pack() if packed else pooled, [enc.rows], pooled, [0, 2, 4], [0.1, 10.0], [])
    assert [(s.fold, s.alpha) for s in scores] == [(k, a) for k in (0, 2, 4) for a in (0.1, 10.0)]
    for s in scores:
        alone = cv.score(pooled.without(s.fold), pooled.fold(s.fold), s.fold, s.alpha)
        assert s.rmse == pytest.approx(alone.rmse, rel=1e-12) and (s.train_rows, s.test_rows) == (alone.train_rows, alone.test_rows)


def test_refits_go_where_they_even_out_the_groups_work():
    from pipeline.core import training

    refits = [(None, a) for a in (0.01, 0.1, 1.0, 10.0)]
    assert training.share_refits([[0, 2, 4], [1, 3]], 4, refits) == [[], refits]  # 12 solves each
    assert training.share_refits([[0, 2], [1, 3]], 4, refits) == [refits[::2], refits[1::2]]
    two = [(f, a) for f in (("PU_DO",), ("PU_DO", "hour")) for a in (0.1, 1.0)]
    assert training.share_refits([[0, 2, 4], [1, 3]], 2, two) == [[], two]  # 12 + 0 against 8 + 4
    assert training.share_refits([[0]], 4, refits) == [refits]
