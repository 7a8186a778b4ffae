"""The boosted challenger on the whole cluster: XGBoost's own Dask interface over the month chunks, as Prefect tasks.

Why a task that takes the cluster, rather than the flow process: the flows here
never hold rows or a Dask client of their own (the task runner's client is made
lazily and is private), and a task is what the UI, retries and the run's logs
know. The task asks its worker for a client (:func:`distributed.worker_client`,
which secedes from the worker's thread pool: ``prefect_dask.get_dask_client``
keeps the thread, and with one thread per worker, the default here, XGBoost's
own task on that worker would wait forever for it). Each training chunk becomes
a partition made on a worker (:func:`pipeline.edge.boosted_rows.chunk_frame`),
the partitions become a Dask DataFrame, and ``xgboost.dask`` trains on all of
them: every row, every worker, the rabit tracker on the scheduler. The validation
month is scored chunk by chunk on the workers too; only sums and the booster's
UBJSON bytes (a few MB) come back.
"""

# No `from __future__ import annotations`: Prefect reads the tasks' annotations (see pipeline/flows/train.py).

import gc
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import distributed
from dask.delayed import delayed
from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.core import boosted
from pipeline.core.config import DEFAULT_CHUNK_ROWS
from pipeline.core.cv import CVScore
from pipeline.edge import boosted_rows, reader
from pipeline.edge.model_files import booster_bytes


@dataclass(frozen=True)
class BoostedFit:
    """A distributed fit's figures and the booster as ``model.ubj`` bytes (what the flow saves)."""

    model: bytes
    train_rows: int
    train_rmse: float
    val_rows: int
    val_rmse: float
    seconds: float  # the fit alone (reading the chunks included), not the validation
    workers: int
    threads: int


#: One partition: a chunk of a month, or a row range of it.
Piece = tuple[reader.MonthPlan, reader.Chunk, boosted_rows.Part]


def pieces(plans: Sequence[reader.MonthPlan], chunk_rows: int, threads: int) -> list[Piece]:
    """The partitions: chunks of at most ``chunk_rows`` rows (whole row groups), each cut in row ranges when there are
    fewer than two per worker thread.

    XGBoost trains each worker on the partitions it holds: one partition per month
    (a small month is one row group) would leave workers idle.
    """
    located = [boosted_rows.with_columns(plan) for plan in plans]  # plans a linear run located may lack trip_distance
    chunks = [(plan, chunk) for plan in located for chunk in reader.plan(plan.layout, chunk_rows)]
    cut = max(1, math.ceil(2 * threads / max(1, len(chunks))))
    return [(plan, chunk, part) for plan, chunk in chunks for part in boosted_rows.split(chunk, cut)]


def fit_on_cluster(
    client: distributed.Client,
    work: Sequence[Piece],
    params: boosted.BoostedParams,
    select: boosted_rows.Selection | None = None,
) -> tuple[Any, int, float]:
    """``xgboost.dask.train`` on every kept (selected) row of the pieces; the booster, its rows and train RMSE.

    The partitions are built on the workers from (plan, chunk) pairs of a few hundred bytes each.
    """
    import dask.dataframe as dd
    import xgboost.dask

    parts = [delayed(boosted_rows.chunk_frame, pure=True)(plan, chunk, boosted.SPEC, select, part) for plan, chunk, part in work]
    frame = client.persist(dd.from_delayed(parts, meta=boosted_rows.meta(), verify_meta=False))
    rows = int(sum(client.compute(frame.map_partitions(len)).result()))
    if rows == 0:
        return None, 0, math.nan
    design, minutes = frame[list(boosted.FEATURES)], frame[boosted.TARGET]
    matrix = xgboost.dask.DaskQuantileDMatrix(client, design, minutes, enable_categorical=True, max_bin=params.max_bin)
    out = xgboost.dask.train(
        client, params.xgb_params(), matrix, num_boost_round=params.rounds, evals=[(matrix, "train")], verbose_eval=False
    )
    # The partitions are released with their last reference; XGBoost's matrix holds them in a reference cycle, so
    # only a collection frees it: without one the training rows stayed on the workers through validation, and a
    # run's cluster closed over them ("Removing worker ... caused the cluster to lose already computed task(s)").
    del frame, design, minutes, matrix
    gc.collect()
    return out["booster"], rows, float(out["history"]["train"]["rmse"][-1])


def error_on_cluster(
    client: distributed.Client,
    model: boosted.BoostedModel,
    work: Sequence[Piece],
    select: boosted_rows.Selection | None = None,
) -> tuple[int, float]:
    """Rows and RMSE of ``model`` on the kept (selected) rows of the pieces: a task per piece on the workers, sums back."""
    shared = client.scatter(model, broadcast=True)
    futures = [client.submit(boosted_rows.chunk_error, plan, chunk, shared, select, part, pure=False) for plan, chunk, part in work]
    sums = client.gather(futures)
    rows, sse = sum(n for n, _ in sums), sum(s for _, s in sums)
    return rows, (math.sqrt(sse / rows) if rows else math.nan)


def _threads(client: distributed.Client) -> tuple[int, int]:
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return len(workers), max(1, sum(w.get("nthreads", 1) for w in workers.values()))


def train_and_validate(
    client: distributed.Client, train: Sequence[reader.MonthPlan], val: reader.MonthPlan, params: boosted.BoostedParams, chunk_rows: int
) -> BoostedFit:
    """Fit on every kept training row over the cluster, then validate on ``val`` chunk by chunk; plain, for tests and benchmarks."""
    workers, threads = _threads(client)
    started = time.perf_counter()
    booster, rows, train_rmse = fit_on_cluster(client, pieces(train, chunk_rows, threads), params)
    seconds = time.perf_counter() - started
    if booster is None:
        return BoostedFit(b"", 0, math.nan, 0, math.nan, seconds, workers, threads)
    model = boosted.BoostedModel(booster, boosted.SPEC, params)
    val_rows, val_rmse = error_on_cluster(client, model, pieces([val], chunk_rows, threads))
    return BoostedFit(booster_bytes(booster), rows, train_rmse, val_rows, val_rmse, seconds, workers, threads)


def holdout_on_cluster(
    client: distributed.Client,
    train: Sequence[reader.MonthPlan],
    params: boosted.BoostedParams,
    folds: int,
    seed: int,
    chunk_rows: int,
    fold: int = 0,
) -> CVScore:
    """Train on the rows of every fold but ``fold`` and score that fold: the rows the linear K-fold CV scores as ``fold``."""
    _, threads = _threads(client)
    work = pieces(train, chunk_rows, threads)
    started = time.perf_counter()
    booster, rows, _ = fit_on_cluster(client, work, params, boosted_rows.Selection(folds, fold, seed, held_out=False))
    if booster is None:
        return CVScore(fold, None, math.nan, 0, 0, time.perf_counter() - started)
    model = boosted.BoostedModel(booster, boosted.SPEC, params)
    test_rows, rmse = error_on_cluster(client, model, work, boosted_rows.Selection(folds, fold, seed, held_out=True))
    return CVScore(fold, None, rmse, rows, test_rows, time.perf_counter() - started)


@contextmanager
def cluster_client() -> Iterator[distributed.Client]:
    """The whole cluster's client from inside a task: the worker's own (seceded, so XGBoost can use this worker's thread),
    or, off a worker (a test's thread runner), the current default client."""
    try:
        distributed.get_worker()
    except ValueError:
        yield distributed.get_client()
        return
    with distributed.worker_client() as client:
        yield client


@task(name="xgboost-train", cache_policy=NO_CACHE, persist_result=False)
def train_boosted(
    train: list[reader.MonthPlan], val: reader.MonthPlan, params: boosted.BoostedParams, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> BoostedFit:
    """Train the boosted challenger with ``xgboost.dask`` on every kept row of ``train`` over the whole cluster; validate on ``val``.

    Runs on a worker of a ``DaskTaskRunner`` flow; the worker's thread is given back to the pool while the cluster trains.
    One xgboost task at a time on a cluster (chain them with ``wait_for=``): see :func:`holdout_boosted`.
    """
    with cluster_client() as client:
        return train_and_validate(client, train, val, params, chunk_rows)


@task(name="xgboost-holdout", cache_policy=NO_CACHE, persist_result=False)
def holdout_boosted(
    train: list[reader.MonthPlan], params: boosted.BoostedParams, folds: int, seed: int, chunk_rows: int = DEFAULT_CHUNK_ROWS, fold: int = 0
) -> CVScore:
    """The boosted model's hold-out RMSE on fold ``fold`` of the linear K-fold split (``fold_of(position, month_salt, seed, folds)``).

    Trained with ``xgboost.dask`` on the other folds' rows over the whole cluster; comparable with the linear candidates'
    fold-``fold`` scores because the held-out rows are the same rows. Run it after (``wait_for=``) any other xgboost
    task on the same cluster, never beside it: each fit holds a task on every worker until all have joined.
    """
    with cluster_client() as client:
        return holdout_on_cluster(client, train, params, folds, seed, chunk_rows, fold)
