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
from prefect.context import FlowRunContext

from pipeline.core import cv, solve, stats
from pipeline.edge import reader
from pipeline.core.config import TrainConfig
from pipeline.errors import PipelineError
from pipeline.core.features import FeatureSpec, encode
from pipeline.edge.metrics import write_metrics
from pipeline.core.model import Model
from pipeline.core.months import Month
from pipeline.orchestration import prefect_patches
from pipeline.edge.sources import is_local


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


def chunk_statistics(plan: reader.MonthPlan, chunk: reader.Chunk, spec: FeatureSpec, folds: int = 1, seed: int = 0) -> stats.Stats:
    """Read one row-group range, encode it, and reduce it to (per-fold) statistics."""
    encoded = encode(reader.read(plan.layout, chunk), spec)
    if folds < 2:
        return stats.compute(encoded)
    fold = stats.fold_of(chunk.offset + encoded.position, stats.month_salt(plan.file.month), seed, folds)
    return stats.compute(encoded, fold, folds)


chunk_stats = task(name="chunk-stats", cache_key_fn=chunk_cache_key)(chunk_statistics)
#: A task of its own: ``with_options(cache_key_fn=None)`` keeps the key function (Prefect 3.8).
chunk_stats_uncached = task(name="chunk-stats", cache_policy=NO_CACHE)(chunk_statistics)


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
    pooled = reduce(add, months).total()
    weights = solve.solve(pooled, alpha)
    return Fit(weights, rows, solve.rmse(weights, pooled))


@task(name="score", cache_policy=NO_CACHE)
def score(fitted: Fit, held_out: stats.Stats) -> tuple[int, float]:
    """Rows and RMSE of the fitted model on held-out statistics."""
    if fitted.weights is None or held_out.rows == 0:
        return held_out.rows, float("nan")
    return held_out.rows, solve.rmse(fitted.weights, held_out)


@dataclass(frozen=True)
class Candidate:
    """A model refit on all training rows at one alpha, scored on the validation month."""

    alpha: float
    fit: Fit
    val_rows: int
    val_rmse: float


@task(name="cv-kfold", cache_policy=NO_CACHE)
def cv_kfold(months: list[stats.Stats], val: stats.Stats, folds: list[int], alphas: list[float],
             refit: list[float]) -> tuple[list[cv.CVScore], list[Candidate]]:
    """Some folds at every alpha, plus the final refits for the ``refit`` alphas.

    A solve takes 5 ms and a Prefect task costs 80-100 ms here, so the grid is
    cut into one task per worker slot rather than a task per fold × alpha, and
    the candidates' final fits are made here too, instead of in a fit and a score
    task after the choice. Every fold × alpha score is still reported.
    """
    pooled = reduce(add, months)
    scores = []
    for k in folds:
        train, test = pooled.without(k), pooled.fold(k)  # once per fold, not per alpha
        scores += [cv.score(train, test, k, alpha) for alpha in alphas]
    candidates = []
    for alpha in refit:
        fitted = fit.fn(months, alpha)
        candidates.append(Candidate(alpha, fitted, *score.fn(fitted, val)))
    return scores, candidates


@task(name="cv-window", cache_policy=NO_CACHE)
def cv_window(earlier: list[stats.Stats], month: stats.Stats, fold: int, alphas: list[float]) -> list[cv.CVScore]:
    """One rolling-origin window (train on ``earlier``, score on ``month``), at every alpha."""
    return [cv.window_score(earlier, month, fold, alpha) for alpha in alphas]


@task(name="estimator-fold", cache_policy=NO_CACHE)
def estimator_fold(plans: list[reader.MonthPlan], spec: FeatureSpec, model: str, folds: int, fold: int,
                   seed: int, max_rows: int | None) -> cv.CVScore:
    """One CV fold of a row-fitted estimator, reading the months on this worker."""
    from pipeline import estimators  # scikit-learn loads only on workers that fit estimators

    rows = estimators.load_rows(plans, spec, folds, seed, max_rows)
    return estimators.fold_score(model, rows, fold, seed)


@dataclass(frozen=True)
class Outcome:
    """What a training path hands back to the flow: small, whatever the data size."""

    weights: solve.Weights | None  # None: nothing to save (no rows, or no pickle-free format)
    train_rows: int
    train_rmse: float
    val_rows: int
    val_rmse: float
    empty: tuple[str, ...] = ()  # what had no trip left after the duration filter


def _empty(named: dict[str, int]) -> tuple[str, ...]:
    return tuple(name for name, rows in named.items() if rows == 0)


@task(name="estimator-fit", cache_policy=NO_CACHE)
def estimator_fit(train: list[reader.MonthPlan], val: reader.MonthPlan, spec: FeatureSpec, model: str,
                  seed: int, max_rows: int | None) -> Outcome:
    """Fit a row-fitted estimator on all (capped) training rows and score the validation month."""
    from pipeline.core import estimators

    train_rows = estimators.load_rows(train, spec, 1, seed, max_rows)
    val_rows = estimators.load_rows([val], spec, 1, seed, None)
    empty = _empty({f"months {', '.join(str(p.file.month) for p in train)}": train_rows.rows, _label(val): val_rows.rows})
    if empty:
        return Outcome(None, train_rows.rows, float("nan"), val_rows.rows, float("nan"), empty)
    fitted = estimators.fit(model, train_rows, seed)
    weights = estimators.sgd_weights(fitted) if model == "sgd" else None
    return Outcome(weights, train_rows.rows, estimators.rmse(fitted, train_rows), val_rows.rows, estimators.rmse(fitted, val_rows))


def _label(plan: reader.MonthPlan) -> str:
    return f"month {plan.file.month} ({plan.file.location})"


def _locate(config: TrainConfig, months: list[Month]) -> dict[Month, reader.MonthPlan]:
    """Plans of every month: local footers are read here (milliseconds, and no task's
    overhead); remote months are fetched by tasks in parallel, with retries.
    """
    columns = config.feature_spec().columns()
    if is_local(config.source):
        return {m: reader.locate(config.source, config.taxi, m, columns, config.cache_dir) for m in months}
    futures = {m: locate_month.submit(config.source, config.taxi, str(m), columns, config.cache_dir) for m in months}
    return {m: f.result() for m, f in futures.items()}


def _month_statistics(config: TrainConfig, plans: dict[Month, reader.MonthPlan], val: Month) -> dict[Month, Any]:
    """Submit chunk and month tasks; return a future of each month's statistics.

    Training months keep per-fold statistics when K-fold CV is on; that is the
    whole cost of CV on the data side.
    """
    spec = config.feature_spec()
    folds = config.folds if config.cross_validates and config.cv == "kfold" else 1
    compute = chunk_stats if config.cache else chunk_stats_uncached
    futures = {}
    for month, plan in plans.items():
        month_folds = folds if month != val else 1
        parts = [compute.submit(plan, chunk, spec, month_folds, config.seed) for chunk in reader.plan(plan.layout, config.chunk_rows)]
        futures[month] = month_stats.submit(parts)
    return futures


def _worker_slots() -> int:
    """Tasks the cluster runs at once (threads over all workers), from the flow's runner."""
    try:
        return max(1, sum(FlowRunContext.get().task_runner.client.nthreads().values()))
    except Exception:  # no Dask runner (e.g. a test calling the flow on another runner)
        return 1


def _cross_validate(config: TrainConfig, train: list[Month], val: Month,
                    per_month: dict[Month, Any]) -> tuple[list[cv.CVScore], dict[float, Candidate]]:
    """Spread the folds (K-fold: and the candidates' refits) over the cluster, one task per worker slot."""
    alphas = unmapped(config.alphas)
    if config.cv == "kfold":
        groups = min(config.folds, _worker_slots())
        folds = [list(range(g, config.folds, groups)) for g in range(groups)]
        refits = [config.alphas[g::groups] for g in range(groups)]
        results = cv_kfold.map(unmapped([per_month[m] for m in train]), unmapped(per_month[val]), folds, alphas, refits).result()
        return [s for scores, _ in results for s in scores], {c.alpha: c for _, found in results for c in found}
    windows = range(1, len(train))
    futures = cv_window.map([[per_month[m] for m in train[:i]] for i in windows],
                            [per_month[train[i]] for i in windows], windows, alphas)
    return [score for group in futures.result() for score in group], {}


def _train_linear(config: TrainConfig, plans: dict[Month, reader.MonthPlan], train: list[Month], val: Month,
                  logger: Any) -> tuple[Outcome, float, dict[str, Any] | None]:
    """The exact path: statistics per month; CV from them (K-fold CV also refits every
    candidate alpha, 5 ms each); else one fit and one score task at the alpha given."""
    per_month = _month_statistics(config, plans, val)
    report, alpha, candidates = None, config.alphas[0], {}
    if config.cross_validates:
        scores, candidates = _cross_validate(config, train, val, per_month)
        alpha = cv.best_alpha(cv.summarize(scores))
        report = cv.report(config.cv, scores, alpha)
        logger.info("CV chose alpha %g: %s", alpha, ", ".join(f"{s['alpha']:g}: {s['mean_rmse']:.4f}" for s in report["by_alpha"]))
    if alpha in candidates:
        chosen = candidates[alpha]
        result, val_rows, val_rmse = chosen.fit, chosen.val_rows, chosen.val_rmse
    else:
        fitted = fit.submit([per_month[m] for m in train], alpha)
        validated = score.submit(fitted, per_month[val])
        result = fitted.result()
        val_rows, val_rmse = validated.result()
    empty = _empty({**{_label(plans[m]): n for m, n in zip(train, result.month_rows)}, _label(plans[val]): val_rows})
    return Outcome(result.weights, sum(result.month_rows), result.rmse, val_rows, val_rmse, empty), alpha, report


def _train_estimator(config: TrainConfig, plans: dict[Month, reader.MonthPlan], train: list[Month], val: Month,
                     logger: Any) -> tuple[Outcome, None, dict[str, Any] | None]:
    """Row-fitted estimators: each fold is a task reading the months on its own worker."""
    spec, train_plans = config.feature_spec(), [plans[m] for m in train]
    folds = None
    if config.cross_validates:  # submitted first, so the folds get the workers before the final fit
        folds = estimator_fold.map(unmapped(train_plans), unmapped(spec), unmapped(config.model), unmapped(config.folds),
                                   range(config.folds), unmapped(config.seed), unmapped(config.max_rows))
    final = estimator_fit.submit(train_plans, plans[val], spec, config.model, config.seed, config.max_rows)
    report = None
    if folds is not None:
        report = cv.report("kfold", folds.result(), None)
        logger.info("CV RMSE of %s: %.4f ± %.4f", config.model, report["by_alpha"][0]["mean_rmse"], report["by_alpha"][0]["std_rmse"])
    return final.result(), None, report


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
        *(f"| {cv.alpha_text(s['alpha'])} | {s['mean_rmse']:.4f} | {s['std_rmse']:.4f} | {s['folds']} |" for s in report["by_alpha"]),
        "",
        f"Chosen alpha: **{cv.alpha_text(report['chosen_alpha'])}**.",
    ]
    create_markdown_artifact(key="cv-summary", markdown="\n".join(lines), description="CV summary")


@flow(name="train-trip-duration", validate_parameters=True)
def train_flow(config: TrainConfig) -> dict[str, Any]:
    """Train on the training months, validate on the next, save model and metrics."""
    prefect_patches.install()
    logger = get_run_logger()
    started = time.perf_counter()
    train, val = config.months()
    logger.info("training %s on %s, validating on %s, from %s", config.model, ", ".join(map(str, train)), val, config.source)
    plans = _locate(config, [*train, val])
    path = _train_linear if config.model == "linear" else _train_estimator
    outcome, alpha, report = path(config, plans, train, val, logger)
    if outcome.empty:
        raise PipelineError(f"{outcome.empty[0]}: no trips left after the duration filter")
    seconds = time.perf_counter() - started
    train_rows = outcome.train_rows
    metrics: dict[str, Any] = {
        "model": config.model,
        "train_months": [str(m) for m in train],
        "val_month": str(val),
        "taxi": config.taxi,
        "alpha": alpha,
        "train_rows": train_rows,
        "val_rows": outcome.val_rows,
        "train_rmse": outcome.train_rmse,
        "val_rmse": outcome.val_rmse,
        "seconds": seconds,
        "rows_per_second": (train_rows + outcome.val_rows) / seconds,
        "flow_run_id": str(flow_run.id),
    }
    if report is not None:
        metrics["cv"] = report
        _publish(report)
    if outcome.weights is not None:
        Model(outcome.weights, config.feature_spec(), {"metrics": metrics, "source": config.source}).save(config.output)
    else:
        logger.warning("%s has no pickle-free model format: writing metrics only", config.model)
    write_metrics(config.output, metrics)
    logger.info("val RMSE %.4f min on %d rows; train RMSE %.4f on %d rows; %.1f s",
                outcome.val_rmse, outcome.val_rows, outcome.train_rmse, train_rows, seconds)
    return metrics
