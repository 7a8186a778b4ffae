"""Row-based estimators: folds shared with the statistics path, sampling, fit and artifact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from pipeline.core import estimators, hashing, solve, stats
from pipeline.core.features import FeatureSpec, encode
from pipeline.core.model import Model
from pipeline.core.months import parse_months
from pipeline.core.rows import Rows
from pipeline.core.schema import DO, PU
from pipeline.edge import chunks, reader
from pipeline.edge.model_files import load_model, save_model
from pipeline.edge.synth import write_months
from pipeline.errors import PipelineError

SPEC = FeatureSpec(numeric=("trip_distance",))
FOLDS = 5
SEED = 3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Fit single-threaded, as on Dask workers (the nanny sets OMP_NUM_THREADS=1).

    On a shared machine OpenMP threads that spin-wait make HistGradientBoosting
    ten times slower; the results are the same.
    """
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> list[reader.MonthPlan]:
    """Two months of 25k rows in row groups of 6k: five chunks each at the finest."""
    folder = tmp_path_factory.mktemp("estimator-months")
    months = parse_months("2023-01:2023-02")
    write_months(folder, months, 25_000, seed=0, row_group_size=6_000)
    return [reader.locate(str(folder), "yellow", m, SPEC.columns()) for m in months]


@pytest.fixture(scope="module")
def rows(plans: list[reader.MonthPlan]) -> Rows:
    return chunks.load_rows(plans, SPEC, FOLDS, SEED, None)


def _assert_same(a: Rows, b: Rows) -> None:
    for name in ("pu", "do", "x", "y", "fold"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def _whole_month(plan: reader.MonthPlan):
    layout = plan.layout
    return encode(reader.read(layout, reader.Chunk(0, len(layout.group_rows), 0, layout.rows)), SPEC)


def test_folds_match_the_statistics_path_for_any_chunking(plans, rows):
    for chunk_rows in (1, 13_000):
        _assert_same(chunks.load_rows(plans, SPEC, FOLDS, SEED, None, chunk_rows=chunk_rows), rows)
    expected_fold, expected_y = [], []
    for plan in plans:
        enc = _whole_month(plan)
        expected_fold.append(hashing.fold_of(enc.position, hashing.month_salt(plan.file.month), SEED, FOLDS))
        expected_y.append(enc.y)
    assert np.array_equal(rows.fold, np.concatenate(expected_fold))
    assert np.array_equal(rows.y, np.concatenate(expected_y))
    assert rows.pu.dtype == rows.fold.dtype == np.int64 and rows.x.shape == (rows.rows, 1)
    assert rows.pu.min() >= 1 and rows.pu.max() <= 265
    share = np.bincount(rows.fold, minlength=FOLDS) / rows.rows
    assert np.all(np.abs(share - 1 / FOLDS) < 0.01)
    assert not chunks.load_rows(plans[:1], SPEC, 1, SEED, None).fold.any()


def test_subsample_is_the_same_uniform_subset_for_any_chunking(plans, rows):
    sample = chunks.load_rows(plans, SPEC, FOLDS, SEED, 10_000, chunk_rows=1)
    for chunk_rows in (13_000, 10**9):
        _assert_same(chunks.load_rows(plans, SPEC, FOLDS, SEED, 10_000, chunk_rows=chunk_rows), sample)
    assert sample.rows == 10_000
    share = np.bincount(sample.fold, minlength=FOLDS) / sample.rows
    assert np.all(np.abs(share - 1 / FOLDS) < 0.02), share  # 5 binomial standard deviations
    assert abs(sample.y.mean() - rows.y.mean()) < 0.03 * rows.y.mean()
    # a subset of the full rows
    full = rows.y + 1e3 * rows.pu + 1e6 * rows.do
    assert np.all(np.isin(sample.y + 1e3 * sample.pu + 1e6 * sample.do, full))
    # another seed draws another sample; a cap above the row count keeps every row
    other = chunks.load_rows(plans, SPEC, FOLDS, SEED + 1, 10_000)
    assert not np.array_equal(other.y, sample.y)
    _assert_same(chunks.load_rows(plans, SPEC, FOLDS, SEED, rows.rows), rows)
    with pytest.raises(ValueError, match="max_rows"):
        chunks.load_rows(plans, SPEC, FOLDS, SEED, 0)


def _exact_fold_rmse(plans: list[reader.MonthPlan], fold: int) -> float:
    """The statistics path on the same folds (default alpha 1e-3)."""
    total = stats.empty(FOLDS, len(SPEC.numeric))
    for plan in plans:
        enc = _whole_month(plan)
        total = total + stats.compute(enc, hashing.fold_of(enc.position, hashing.month_salt(plan.file.month), SEED, FOLDS), FOLDS)
    return solve.rmse(solve.solve(total.without(fold), 1e-3), total.fold(fold))


@pytest.mark.parametrize("name", estimators.ESTIMATORS)
def test_estimators_beat_the_mean_and_match_the_exact_path(plans, rows, name):
    score = estimators.fold_score(name, rows, 0, seed=0)
    train, test = rows.select(rows.fold != 0), rows.select(rows.fold == 0)
    mean_rmse = float(np.sqrt(np.mean((test.y - train.y.mean()) ** 2)))
    exact_rmse = _exact_fold_rmse(plans, 0)
    print(f"{name}: fold 0 RMSE {score.rmse:.3f}, mean predictor {mean_rmse:.3f}, exact linear {exact_rmse:.3f}, {score.seconds:.2f} s")
    assert (score.fold, score.train_rows, score.test_rows) == (0, train.rows, test.rows)
    assert score.rmse < 0.7 * mean_rmse
    assert score.rmse < 1.02 * exact_rmse
    assert score.seconds > 0


def test_hist_gradient_boosting_takes_every_zone_id(rows):
    train = rows.select(rows.fold != 0)
    assert np.unique(train.pu).size < 265  # some zones never appear in the synthetic month
    fitted = estimators.fit("hist_gradient_boosting", train, seed=0)
    grid = np.arange(1, 266)
    every = Rows(grid, grid[::-1].copy(), np.full((265, 1), 2.0), np.full(265, 10.0), np.zeros(265, dtype=np.int64))
    assert np.all(np.isfinite(estimators.predict(fitted, every)))  # unseen zones share "other"
    # more than 254 distinct zones in training: the rare ones share one category
    widened = Rows(*(np.concatenate([getattr(train, f), getattr(every, f)]) for f in ("pu", "do", "x", "y", "fold")))
    fitted = estimators.fit("hist_gradient_boosting", widened, seed=0)
    for lookup in fitted.named_steps["zones"].lookup_:
        assert np.unique(lookup[1:]).size == 255 and lookup.max() == 254
    assert np.all(np.isfinite(estimators.predict(fitted, every)))


@pytest.mark.parametrize("name", estimators.ESTIMATORS)
def test_fits_are_deterministic_for_a_seed(rows, name):
    train, test = rows.select(rows.fold != 1), rows.select(rows.fold == 1)
    first, second = (estimators.fit(name, train, seed=5) for _ in range(2))
    assert np.array_equal(estimators.predict(first, test), estimators.predict(second, test))
    assert estimators.rmse(first, test) == estimators.rmse(second, test)


def test_sgd_weights_round_trip_through_the_model_artifact(rows, tmp_path: Path):
    train, test = rows.select(rows.fold != 2), rows.select(rows.fold == 2)
    fitted = estimators.fit("sgd", train, seed=0)
    weights = estimators.sgd_weights(fitted)
    assert weights.pair.shape == (266 * 266,) and weights.numeric.shape == (1,)
    frame = pd.DataFrame({PU: test.pu, DO: test.do, "trip_distance": test.x[:, 0]})
    expected = estimators.predict(fitted, test)
    np.testing.assert_allclose(Model(weights, SPEC).predict(frame), expected, rtol=1e-10, atol=1e-9)
    save_model(Model(weights, SPEC), tmp_path)
    np.testing.assert_allclose(load_model(tmp_path).predict(frame), expected, rtol=1e-10, atol=1e-9)
    with pytest.raises(PipelineError, match="sgd"):
        estimators.sgd_weights(estimators.fit("hist_gradient_boosting", test, seed=0))


def test_unknown_estimator_names_the_flag_and_the_choices(rows):
    with pytest.raises(PipelineError, match="--model") as error:
        estimators.make_estimator("random_forest", 0)
    assert all(name in str(error.value) for name in estimators.ESTIMATORS)
    with pytest.raises(PipelineError, match="--model"):
        estimators.fold_score("linear_svr", rows, 0, seed=0)


def test_a_fold_without_rows_is_a_clear_error(rows):
    with pytest.raises(PipelineError, match="fold 7"):
        estimators.fold_score("sgd", rows, 7, seed=0)
