"""The Dask ecosystem's own answer to the same task: dask-ml's LinearRegression (lbfgs).

Closest configuration that fits and finishes: the seed's features (one-hot
pickup, dropoff and pair, only the categories seen in training, as
DictVectorizer makes them) as a dask array of sparse blocks, and an L2 penalty
equal to the project's alpha (dask-glm minimises ``‖y - Xβ‖² + ½λ‖β‖²`` with
``λ = 1/C``). Two things dask-ml cannot do with that design: add its intercept
column to sparse blocks, and normalise it (that makes the blocks dense, and it
refuses designs with more than one constant column). So the design carries its
own column of ones and is fitted unnormalised. It is capped at ``bench.peer_rows``
rows a month; the project runs on the same files, so the ratio is per row.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.sparse
import sparse
from dask_ml.linear_model import LinearRegression

from benchmarks.common import ALPHA, best_of, encoded_month, months, project_fit
from pipeline.core.features import N_ZONES
from pipeline.core.months import Month

pytestmark = [
    pytest.mark.reference,
    pytest.mark.usefixtures("one_core"),
    # dask-glm 0.4.0 uses options its newer dependencies deprecate
    pytest.mark.filterwarnings("ignore:Dask configuration key 'fuse_ave_width':FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:dask_glm.*"),
]

#: Row blocks per month: enough for the threaded scheduler to keep both cores busy.
BLOCKS = 4


def _block_rows(rows: int) -> int:
    return -(-rows // BLOCKS)


def _features(pair: np.ndarray) -> np.ndarray:
    """(rows, 3) one-hot column ids: pickup zone, dropoff zone, pickup-dropoff pair."""
    return np.stack([pair // N_ZONES, N_ZONES + pair % N_ZONES, 2 * N_ZONES + pair], axis=1)


def _design(pair: np.ndarray, vocabulary: np.ndarray) -> da.Array:
    """Sparse one-hot design over ``vocabulary`` plus a column of ones; unseen categories add nothing."""
    ids = _features(pair)
    column = np.minimum(np.searchsorted(vocabulary, ids), len(vocabulary) - 1)
    seen = vocabulary[column] == ids
    row = np.broadcast_to(np.arange(len(pair))[:, None], ids.shape)
    onehot = scipy.sparse.csr_matrix((np.ones(seen.sum()), (row[seen], column[seen])), shape=(len(pair), len(vocabulary)))
    design = sparse.COO.from_scipy_sparse(scipy.sparse.hstack([onehot, np.ones((len(pair), 1))]))
    return da.from_array(design, chunks=(_block_rows(len(pair)), -1), asarray=False)


def dask_ml_validation_rmse(folder: Path, train: Month, val: Month) -> tuple[int, float]:
    """Design columns and validation RMSE of dask-ml (default 100 lbfgs iterations) on the seed's features."""
    fit_on, held_out = encoded_month(folder, train), encoded_month(folder, val)
    vocabulary = np.unique(_features(fit_on.pair))
    model = LinearRegression(solver="lbfgs", C=1 / (2 * ALPHA), fit_intercept=False, solver_kwargs={"normalize": False})
    model.fit(_design(fit_on.pair, vocabulary), da.from_array(fit_on.y, chunks=_block_rows(fit_on.rows)))
    predicted = np.asarray(model.predict(_design(held_out.pair, vocabulary)).compute())
    return len(vocabulary) + 1, float(np.sqrt(np.mean((predicted - held_out.y) ** 2)))


def test_project_vs_dask_ml(benchmark, bench):
    train, val = months(2)
    peer_seconds, (columns, peer_rmse) = best_of(lambda: dask_ml_validation_rmse(bench.peer_folder, train, val))
    seconds, fitted = best_of(lambda: project_fit(bench.peer_folder, [train], val), rounds=3, benchmark=benchmark)
    rows = 2 * bench.peer_rows
    speedup = peer_seconds / seconds
    benchmark.extra_info.update(
        rows=rows,
        rows_per_second=rows / seconds,
        dask_ml_seconds=peer_seconds,
        dask_ml_rows_per_second=rows / peer_seconds,
        speedup=speedup,
        val_rmse=fitted.val_rmse,
        dask_ml_val_rmse=peer_rmse,
        dask_ml_columns=columns,
        headline=f"project vs dask-ml, {rows:,} rows: {speedup:.0f}x rows/s",
    )
    # a peer that stopped far from the least-squares fit would make the ratio meaningless
    assert peer_rmse == pytest.approx(fitted.val_rmse, rel=0.05)
    assert speedup >= bench.floors.peer_speedup
