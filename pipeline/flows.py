"""Prefect tasks and flows: thin calls into the pure modules, deciding what runs where.

Only small things cross the flow process: month plans (a few hundred bytes),
model weights (about 0.5 MB) and metrics. Chunk statistics (about 1 MB each)
move worker to worker as Dask futures.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import reduce
from operator import add
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.cache_policies import NO_CACHE

from pipeline import cv, reader, solve, stats
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


#: Bump when the statistics' layout or meaning changes, so old cache entries stop matching.
STATS_VERSION = "stats-v2"


def chunk_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """A chunk's statistics depend only on the file's content version, its row groups and the options.

    The file identity (size + mtime locally, the ETag remotely) changes when the
    month is rewritten, so a stale entry is never used; hashing the inputs
    instead would mean pickling them on every call.
    """
    plan, chunk = parameters["plan"], parameters["chunk"]
    key = [STATS_VERSION, plan.file.location, plan.file.identity, chunk.first, chunk.stop,
           parameters["spec"].to_dict(), parameters.get("folds", 1), parameters.get("seed", 0)]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@task(name="chunk-stats", cache_key_fn=chunk_cache_key)
def chunk_stats(plan: reader.MonthPlan, chunk: reader.Chunk, spec: FeatureSpec, folds: int = 1, seed: int = 0) -> stats.Stats:
    """Read one row-group range, encode it, and reduce it to (per-fold) statistics."""
    encoded = encode(reader.read(plan.layout, chunk), spec)
    if folds < 2:
        return stats.compute(encoded)
    fold = stats.fold_of(chunk.offset + encoded.position, stats.month_salt(plan.file.month), seed, folds)
    return stats.compute(encoded, fold, folds)


@task(name="month-stats", cache_policy=NO_CACHE)
def month_stats(parts: list[stats.Stats]) -> stats.Stats:
    """Add a month's chunk statistics."""
    return reduce(add, parts)


@task(name="pool-months", cache_policy=NO_CACHE)
def pool_months(months: list[stats.Stats]) -> stats.Stats:
    """Add the training months' per-fold statistics, once for every CV solve."""
    return reduce(add, months)


@task(name="cv-kfold", cache_policy=NO_CACHE)
def cv_kfold(pooled: stats.Stats, fold: int, alpha: float) -> cv.CVScore:
    """One fold at one alpha, from the pooled per-fold statistics."""
    return cv.kfold_score(pooled, fold, alpha)


@task(name="cv-window", cache_policy=NO_CACHE)
def cv_window(earlier: list[stats.Stats], month: stats.Stats, fold: int, alpha: float) -> cv.CVScore:
    """One rolling-origin window at one alpha."""
    return cv.window_score(earlier, month, fold, alpha)


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
    pooled = reduce(add, months).total()
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


def _month_statistics(config: TrainConfig, train: list[Month], val: Month) -> tuple[dict[Month, reader.MonthPlan], dict[Month, Any]]:
    """Submit locate, chunk and month tasks; return plans and a future of each month's statistics.

    Training months keep per-fold statistics when K-fold CV is on; that is the
    whole cost of CV on the data side.
    """
    spec = config.feature_spec()
    folds = config.folds if config.cross_validates and config.cv == "kfold" else 1
    months = [*train, val]
    plans = {m: locate_month.submit(config.source, config.taxi, str(m), spec.columns(), config.cache_dir) for m in months}
    compute = chunk_stats if config.cache else chunk_stats.with_options(cache_key_fn=None, cache_policy=NO_CACHE)
    located, futures = {}, {}
    for month, planned in plans.items():
        plan = located[month] = planned.result()
        month_folds = folds if month != val else 1
        parts = [compute.submit(plan, chunk, spec, month_folds, config.seed) for chunk in reader.plan(plan.layout, config.chunk_rows)]
        futures[month] = month_stats.submit(parts)
    return located, futures


def _cross_validate(config: TrainConfig, train: list[Month], per_month: dict[Month, Any]) -> list[cv.CVScore]:
    """Map every fold × alpha solve over the cluster; only the scores come back."""
    if config.cv == "kfold":
        pooled = pool_months.submit([per_month[m] for m in train])
        grid = [(k, a) for a in config.alphas for k in range(config.folds)]
        futures = cv_kfold.map(unmapped(pooled), [k for k, _ in grid], [a for _, a in grid])
    else:
        grid = [(i, a) for a in config.alphas for i in range(1, len(train))]
        futures = cv_window.map(
            [[per_month[m] for m in train[:i]] for i, _ in grid],
            [per_month[train[i]] for i, _ in grid],
            [i for i, _ in grid],
            [a for _, a in grid],
        )
    return list(futures.result())


def _publish(report: dict[str, Any]) -> None:
    """The CV table and a summary as artifacts of the flow run, for the Prefect UI."""
    create_table_artifact(
        key="cv-scores",
        table=report["scores"],
        description=f"{report['kind']} CV: RMSE (minutes), rows and seconds per fold and alpha",
    )
    lines = [
        f"### {report['kind']} cross-validation, {report['folds']} folds",
        "",
        "| alpha | mean RMSE | std | folds |",
        "| ---: | ---: | ---: | ---: |",
        *(f"| {s['alpha']:g} | {s['mean_rmse']:.4f} | {s['std_rmse']:.4f} | {s['folds']} |" for s in report["by_alpha"]),
        "",
        f"Chosen alpha: **{report['chosen_alpha']:g}**.",
    ]
    create_markdown_artifact(key="cv-summary", markdown="\n".join(lines), description="CV summary")


@flow(name="train-trip-duration", validate_parameters=True)
def train_flow(config: TrainConfig) -> dict[str, Any]:
    """Train on the training months, validate on the next, save model and metrics."""
    logger = get_run_logger()
    started = time.perf_counter()
    train, val = config.months()
    logger.info("training on %s, validating on %s, from %s", ", ".join(map(str, train)), val, config.source)
    plans, per_month = _month_statistics(config, train, val)
    cv_report = None
    alpha = config.alphas[0]
    if config.cross_validates:
        scores = _cross_validate(config, train, per_month)
        alpha = cv.best_alpha(cv.summarize(scores))
        cv_report = cv.report(config.cv, scores, alpha)
        logger.info("CV chose alpha %g: %s", alpha, ", ".join(f"{s['alpha']:g}: {s['mean_rmse']:.4f}" for s in cv_report["by_alpha"]))
    fitted = fit.submit([per_month[m] for m in train], alpha)
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
        "alpha": alpha,
        "train_rows": sum(result.month_rows),
        "val_rows": val_rows,
        "train_rmse": result.rmse,
        "val_rmse": val_rmse,
        "seconds": seconds,
        "rows_per_second": (sum(result.month_rows) + val_rows) / seconds,
        "flow_run_id": str(flow_run.id),
    }
    if cv_report is not None:
        metrics["cv"] = cv_report
        _publish(cv_report)
    model = Model(result.weights, config.feature_spec(), {"metrics": metrics, "source": config.source})
    model.save(config.output)
    write_metrics(config.output, metrics)
    logger.info("val RMSE %.4f min on %d rows; train RMSE %.4f on %d rows; %.1f s", val_rmse, val_rows, result.rmse, metrics["train_rows"], seconds)
    return metrics
