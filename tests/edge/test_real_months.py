"""The exact path on real TLC green months, against independent references.

The months are the public files the course trains on (``tests/data/tlc-green``).
References: the course's row counts, scikit-learn's ``LinearRegression`` run to
convergence on the course's ``DictVectorizer`` design, and scikit-learn's
``Ridge`` on the same one-hot design as a binned spec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline.core import solve, stats
from pipeline.core.features import FeatureSpec
from pipeline.core.model import Model
from pipeline.core.months import Month
from pipeline.edge import chunks, reader

GREEN = Path(__file__).resolve().parents[1] / "data" / "tlc-green"
BINNED = "PULocationID,DOLocationID,PU_DO,trip_distance:log48,hour_of_week"
#: The binned spec with the pickup zone's effect in each block of 4 hours.
ZONE_HOURS = f"{BINNED},PULocationID*hour/4"


def month_stats(month: str, spec: FeatureSpec, folds: int = 1) -> stats.Stats:
    plan = reader.locate(str(GREEN), "green", Month.parse(month), spec.columns())
    return stats.combine([chunks.chunk_statistics(plan, c, spec, folds) for c in reader.plan(plan.layout, 4_000_000)])


def course_frame(month: str) -> pd.DataFrame:
    """The course's read: duration in minutes, trips of 1 to 60 minutes kept."""
    frame = pd.read_parquet(GREEN / f"green_tripdata_{month}.parquet")
    frame["duration"] = (frame.lpep_dropoff_datetime - frame.lpep_pickup_datetime).dt.total_seconds() / 60
    return frame[(frame.duration >= 1) & (frame.duration <= 60)].reset_index(drop=True)


def test_the_course_row_counts():
    spec = FeatureSpec()
    counts = [month_stats(m, spec).rows for m in ("2021-01", "2021-02", "2021-03")]
    assert counts == [73_908, 61_921, 80_372]
    assert counts == [len(course_frame(m)) for m in ("2021-01", "2021-02", "2021-03")]


def test_pu_do_and_distance_is_the_exact_least_squares_not_the_courses_lsqr_stop():
    """The course's 7.7587 is lsqr stopping at its default tolerance; run to convergence it is what the exact path gives."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import root_mean_squared_error

    spec = FeatureSpec.of("PU_DO,trip_distance")
    exact = solve.rmse(solve.solve(month_stats("2021-01", spec), 1e-8, spec.zones), month_stats("2021-02", spec))
    train, val = course_frame("2021-01"), course_frame("2021-02")
    for frame in (train, val):
        frame["PU_DO"] = frame.PULocationID.astype(str) + "_" + frame.DOLocationID.astype(str)
    vectorizer = DictVectorizer()
    x_train = vectorizer.fit_transform(train[["PU_DO", "trip_distance"]].to_dict(orient="records"))
    x_val = vectorizer.transform(val[["PU_DO", "trip_distance"]].to_dict(orient="records"))
    converged = LinearRegression(tol=1e-14).fit(x_train, train.duration)
    assert exact == pytest.approx(root_mean_squared_error(val.duration, converged.predict(x_val)), rel=1e-6)
    assert f"{exact:.4f}" == "7.4808"
    course = LinearRegression().fit(x_train, train.duration)  # the course's call: lsqr at its default tolerance
    assert f"{root_mean_squared_error(val.duration, course.predict(x_val)):.4f}" == "7.7587"


def _one_hot_design(frame: pd.DataFrame, spec: FeatureSpec) -> sp.csr_matrix:
    """The binned spec's design, built independently with pandas: one column per zone, pair, distance bin and hour of
    week, and with a zone interaction one per pickup zone and block of 4 hours."""
    (distance,) = spec.factors[0].parts
    edges = np.asarray(distance.edges)
    pickup = frame.lpep_pickup_datetime.dt
    codes = {
        "pu": (frame.PULocationID.to_numpy(), 266),
        "do": (frame.DOLocationID.to_numpy(), 266),
        "pair": (frame.PULocationID.to_numpy() * 266 + frame.DOLocationID.to_numpy(), 266 * 266),
        "distance": (np.searchsorted(edges, frame.trip_distance.fillna(0).to_numpy(), side="right"), len(edges) + 1),
        "hour_of_week": ((pickup.day_of_week * 24 + pickup.hour).to_numpy(), 168),
    }
    if len(spec.factors) == 3:
        codes["pickup_zone_by_4_hours"] = ((frame.PULocationID * 6 + pickup.hour // 4).to_numpy(), 266 * 6)
    rows = np.arange(len(frame))
    blocks = [sp.csr_matrix((np.ones(len(frame)), (rows, code)), shape=(len(frame), size)) for code, size in codes.values()]
    return sp.hstack(blocks).tocsr()


@pytest.mark.parametrize("terms", [BINNED, ZONE_HOURS])
def test_a_binned_spec_is_scikit_learns_ridge_on_the_same_one_hots(terms: str):
    from sklearn.linear_model import Ridge

    spec, alpha = FeatureSpec.of(terms), 3.0
    weights = solve.solve(month_stats("2021-01", spec), alpha, spec.zones)
    ours = solve.rmse(weights, month_stats("2021-02", spec))
    train, val = course_frame("2021-01"), course_frame("2021-02")
    ridge = Ridge(alpha=alpha, solver="sparse_cg", tol=1e-12, max_iter=20_000).fit(_one_hot_design(train, spec), train.duration)
    predicted = ridge.predict(_one_hot_design(val, spec))
    theirs = float(np.sqrt(np.mean((predicted - val.duration) ** 2)))
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert ours < 0.8 * solve.rmse(solve.solve(month_stats("2021-01", FeatureSpec()), 1e-3), month_stats("2021-02", FeatureSpec()))
    # row by row, the model's predictions are the ridge's, clipped to the training window
    model = Model(weights, spec)
    assert np.allclose(model.predict(_canonical(val)), np.clip(predicted, 1, 60), rtol=0, atol=1e-6)


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={"lpep_pickup_datetime": "pickup_datetime", "lpep_dropoff_datetime": "dropoff_datetime"})


def test_k_fold_statistics_are_those_of_each_folds_rows():
    """Five folds from one pass: each fold's statistics equal the statistics of its rows alone, and they add up."""
    spec = FeatureSpec.of(BINNED)
    per_fold, whole = month_stats("2021-01", spec, folds=5), month_stats("2021-01", spec)
    total = per_fold.total()
    for field in ("count", "sum_micros", "cross", "level_pairs", "level_micros"):
        assert np.array_equal(getattr(total, field), getattr(whole, field))
    assert per_fold.fold(2).rows + per_fold.without(2).rows == whole.rows


def _same(a: stats.Stats, b: stats.Stats) -> bool:
    fields = (*a._arrays(), a.screened, a.cross, a.cross_pairs)
    return all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(fields, (*b._arrays(), b.screened, b.cross, b.cross_pairs)))


def test_packed_months_add_up_to_the_same_statistics():
    """Months travel packed (their non-zero counts per level and pair): unpacked they are the same, and added packed,
    whole or mixed, in any order, they sum to the same statistics, to the bit, on far less memory."""
    spec = FeatureSpec.of(BINNED)
    months = [month_stats(m, spec, folds=5) for m in ("2021-01", "2021-02", "2021-03")]
    packed = [m.pack() for m in months]
    for whole, small in zip(months, packed):
        assert _same(small.unpack(), whole)
        assert small.rows == whole.rows and np.array_equal(small.screened, whole.screened)
        assert small.cells.nbytes + small.counts.nbytes < whole.cross.nbytes / 3
        assert not any(np.shares_memory(whole.cross, a) for a in (small.rest.cross, small.cells, small.counts))  # nor keeps it alive
    pooled = months[0] + months[1] + months[2]
    assert _same(stats.combine(packed), pooled)
    assert _same(stats.combine([packed[2], months[0], packed[1]]), pooled)
    assert pooled.cross_pairs.size > max(m.cross_pairs.size for m in months)  # the union of the months' pairs


def test_no_prediction_leaves_the_training_window():
    """A linear term in raw distance extrapolates below zero; predictions are clipped to 1..60 minutes."""
    spec = FeatureSpec.of("PULocationID,DOLocationID,PU_DO,trip_distance")
    model = Model(solve.solve(month_stats("2021-01", spec), 1e-3, spec.zones), spec)
    far = pd.DataFrame({"PULocationID": [132, 132], "DOLocationID": [236, 236], "trip_distance": [3.2, -1e9]})
    weights = model.weights
    raw = weights.pair_prediction()[132 * 266 + 236] + far.trip_distance.to_numpy() * weights.numeric[0]
    assert raw.min() < 1.0 or raw.max() > 60.0  # an absurd distance takes the linear term far out
    predicted = model.predict(far)
    assert predicted.tolist() == np.clip(raw, 1.0, 60.0).tolist()


def test_sparse_and_dense_level_counts_solve_alike(monkeypatch: pytest.MonkeyPatch):
    """Real months fill about 1% of the counts per level and pair, so the solve takes them sparse; dense, it is the same model."""
    spec = FeatureSpec.of(BINNED)
    train, val = month_stats("2021-01", spec), month_stats("2021-02", spec)
    assert np.count_nonzero(train.cross) < solve.SPARSE_BELOW * train.cross.size
    sparse = solve.solve(train, 3.0, spec.zones)
    monkeypatch.setattr(solve, "SPARSE_BELOW", 0.0)
    dense = solve.solve(train, 3.0, spec.zones)
    for a, b in zip((sparse.pu, sparse.do, sparse.pair, sparse.levels), (dense.pu, dense.do, dense.pair, dense.levels)):
        assert np.allclose(a, b, rtol=0, atol=1e-9)
    assert solve.rmse(sparse, val) == pytest.approx(solve.rmse(dense, val), rel=1e-12)
