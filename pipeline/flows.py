"""Prefect tasks and flows: thin calls into the pure modules, deciding what runs where.

Only small things cross the flow process: month plans (a few hundred bytes),
model weights (about 0.5 MB) and metrics. Chunk statistics (about 1 MB each)
move worker to worker as Dask futures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import reduce
from operator import add
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.cache_policies import NO_CACHE

from pipeline import reader, solve, stats
from pipeline.config import TrainConfig
from pipeline.errors import PipelineError
from pipeline.features import FeatureSpec, encode
from pipeline.metrics import write_metrics
from pipeline.model import Model
from pipeline.months import Month


def _retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups; a PipelineError (missing file, bad schema) is final."""
    try:
        state.result()
    except PipelineError:
        return False
    except Exception:
        return True
    return False


@task(name="locate-month", retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_unless_bad_input, cache_policy=NO_CACHE)
def locate_month(source: str, taxi: str, month: str, columns: tuple[str, ...], cache_dir: Path | None) -> reader.MonthPlan:
    """Fetch the month into the local cache if remote, and check its footer."""
    return reader.locate(source, taxi, Month.parse(month), columns, cache_dir)


@task(name="chunk-stats", cache_policy=NO_CACHE)
def chunk_stats(plan: reader.MonthPlan, chunk: reader.Chunk, spec: FeatureSpec) -> stats.Stats:
    """Read one row-group range, encode it, and reduce it to statistics."""
    return stats.compute(encode(reader.read(plan.layout, chunk), spec))


@task(name="month-stats", cache_policy=NO_CACHE)
def month_stats(parts: list[stats.Stats]) -> stats.Stats:
    """Add a month's chunk statistics."""
    return reduce(add, parts)


@dataclass(frozen=True)
class Fit:
    """Weights and training figures; ``weights`` is None when a month had no rows left."""

    weights: solve.Weights | None
    month_rows: list[int]
    rmse: float


@task(name="fit", cache_policy=NO_CACHE)
def fit(months: list[stats.Stats], alpha: float) -> Fit:
    """Pool the training months and solve ridge exactly.

    An empty month comes back as a value, so the flow can name it in one line.
    """
    rows = [m.rows for m in months]
    if 0 in rows:
        return Fit(None, rows, float("nan"))
    pooled = reduce(add, months)
    weights = solve.solve(pooled, alpha)
    return Fit(weights, rows, solve.rmse(weights, pooled))


@task(name="score", cache_policy=NO_CACHE)
def score(fitted: Fit, held_out: stats.Stats) -> tuple[int, float]:
    """Rows and RMSE of the fitted model on held-out statistics."""
    if fitted.weights is None or held_out.rows == 0:
        return held_out.rows, float("nan")
    return held_out.rows, solve.rmse(fitted.weights, held_out)


def _check_not_empty(plans: dict[Month, reader.MonthPlan], rows: dict[Month, int]) -> None:
    for month, count in rows.items():
        if count == 0:
            raise PipelineError(f"month {month}: no trips left after the duration filter in {plans[month].file.location}")


def _month_statistics(config: TrainConfig, months: list[Month]) -> tuple[dict[Month, reader.MonthPlan], dict[Month, Any]]:
    """Submit locate, chunk and month tasks; return plans and a future of each month's statistics."""
    spec = config.feature_spec()
    plans = {m: locate_month.submit(config.source, config.taxi, str(m), spec.columns(), config.cache_dir) for m in months}
    located, futures = {}, {}
    for month, planned in plans.items():
        plan = located[month] = planned.result()
        parts = [chunk_stats.submit(plan, chunk, spec) for chunk in reader.plan(plan.layout, config.chunk_rows)]
        futures[month] = month_stats.submit(parts)
    return located, futures


@flow(name="train-trip-duration", validate_parameters=True)
def train_flow(config: TrainConfig) -> dict[str, Any]:
    """Train on the training months, validate on the next, save model and metrics."""
    logger = get_run_logger()
    started = time.perf_counter()
    train, val = config.months()
    logger.info("training on %s, validating on %s, from %s", ", ".join(map(str, train)), val, config.source)
    plans, per_month = _month_statistics(config, [*train, val])
    fitted = fit.submit([per_month[m] for m in train], config.alpha)
    validated = score.submit(fitted, per_month[val])
    result = fitted.result()
    val_rows, val_rmse = validated.result()
    _check_not_empty(plans, {**dict(zip(train, result.month_rows)), val: val_rows})
    assert result.weights is not None
    seconds = time.perf_counter() - started
    metrics = {
        "train_months": [str(m) for m in train],
        "val_month": str(val),
        "taxi": config.taxi,
        "alpha": config.alpha,
        "train_rows": sum(result.month_rows),
        "val_rows": val_rows,
        "train_rmse": result.rmse,
        "val_rmse": val_rmse,
        "seconds": seconds,
        "rows_per_second": (sum(result.month_rows) + val_rows) / seconds,
        "flow_run_id": str(flow_run.id),
    }
    model = Model(result.weights, config.feature_spec(), {"metrics": metrics, "source": config.source})
    model.save(config.output)
    write_metrics(config.output, metrics)
    logger.info("val RMSE %.4f min on %d rows; train RMSE %.4f on %d rows; %.1f s", val_rmse, val_rows, result.rmse, metrics["train_rows"], seconds)
    return metrics
