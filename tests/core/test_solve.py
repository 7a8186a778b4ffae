"""The exact solver against scikit-learn on the same one-hot design."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import Ridge

from pipeline.core import solve, stats
from pipeline.core.features import N_ZONES, Encoded


def _encoded(rows: int, seed: int, numeric: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    pu = rng.integers(1, 40, rows)
    do = rng.integers(1, 40, rows)
    x = rng.normal(size=(rows, numeric))
    y = 12 + 0.2 * pu - 0.1 * do + ((pu * 7 + do) % 5) + x @ np.linspace(1, -1, numeric) + rng.normal(size=rows)
    micros = np.round(y * 60e6).astype(np.int64)
    return Encoded(pair=pu * N_ZONES + do, micros=micros, x=x, position=np.arange(rows))


def _design(enc: Encoded) -> sp.csr_matrix:
    n = enc.rows
    rows = np.arange(n)
    pu, do = enc.pair // N_ZONES, enc.pair % N_ZONES

    def onehot(codes, width):
        return sp.csr_matrix((np.ones(n), (rows, codes)), shape=(n, width))

    return sp.hstack([onehot(pu, N_ZONES), onehot(do, N_ZONES), onehot(enc.pair, N_ZONES**2), sp.csr_matrix(enc.x)]).tocsr()


def _predict(w: solve.Weights, enc: Encoded) -> np.ndarray:
    return w.pair_prediction()[enc.pair] + enc.x @ w.numeric


@pytest.mark.parametrize("numeric", [0, 2])
@pytest.mark.parametrize("alpha", [1e-2, 1.0, 30.0])
def test_matches_sklearn_ridge(alpha, numeric):
    enc = _encoded(5000, seed=1, numeric=numeric)
    weights = solve.solve(stats.compute(enc), alpha)
    ref = Ridge(alpha=alpha, solver="sparse_cg", tol=1e-13, max_iter=100_000).fit(_design(enc), enc.y)
    np.testing.assert_allclose(_predict(weights, enc), ref.predict(_design(enc)), atol=1e-6)
    assert weights.intercept == pytest.approx(ref.intercept_, abs=1e-6)


@pytest.mark.parametrize("numeric", [0, 3])
def test_sse_from_statistics_equals_sse_over_rows(numeric):
    train, held = _encoded(4000, seed=2, numeric=numeric), _encoded(3000, seed=3, numeric=numeric)
    weights = solve.solve(stats.compute(train), 0.5)
    for enc in (train, held):
        by_rows = np.sqrt(np.mean((_predict(weights, enc) - enc.y) ** 2))
        assert solve.rmse(weights, stats.compute(enc)) == pytest.approx(by_rows, rel=1e-10)


def test_unseen_categories_get_zero_weight():
    enc = _encoded(3000, seed=4)
    weights = solve.solve(stats.compute(enc), 1e-3)
    seen_pu = np.unique(enc.pair // N_ZONES)
    unseen = np.setdiff1d(np.arange(N_ZONES), seen_pu)
    assert unseen.size > 0
    assert np.all(weights.pu[unseen] == 0)
    seen_pairs = np.zeros(N_ZONES**2, bool)
    seen_pairs[enc.pair] = True
    assert np.all(weights.pair[~seen_pairs] == 0)
    assert np.count_nonzero(weights.pair[seen_pairs]) == seen_pairs.sum()


def test_alpha_must_be_positive():
    with pytest.raises(ValueError):
        solve.solve(stats.compute(_encoded(100, seed=5)), 0.0)


@pytest.mark.parametrize("filled", [0.02, 0.3, 1.0])
def test_counts_per_level_and_pair_project_alike_dense_and_sparse(filled):
    """The Schur complement's zone columns, ``Uᵀ diag(w) Cᵀ``, from dense and sparse counts: the definition's figures,
    the intercept's row included (the pickup zones' rows added up)."""
    rng = np.random.default_rng(7)
    pairs = np.unique(rng.integers(0, N_ZONES * N_ZONES, 3_000))
    counts = rng.integers(1, 50, (40, pairs.size)) * (rng.random((40, pairs.size)) < filled)
    weights = rng.random(pairs.size)
    dense = np.asfortranarray(counts, dtype=np.float64)
    u = np.zeros((1 + 2 * N_ZONES, pairs.size))
    pu, do = np.divmod(pairs, N_ZONES)
    u[0], u[1 + pu, np.arange(pairs.size)], u[1 + N_ZONES + do, np.arange(pairs.size)] = 1, 1, 1
    expected = (u * weights) @ counts.T
    for matrix in (dense, sp.csr_matrix(dense)):
        assert np.allclose(solve._project_rows(matrix, pairs, weights), expected, rtol=1e-12, atol=1e-9)
