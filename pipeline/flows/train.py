"""The training flows: tasks that wrap the kernel and the core, and the decisions of what runs where.

``train-trip-duration`` is the entry a person, ``pipeline.run.train`` or a
deployment calls: it resolves the Dask cluster from inside the run and runs
``train-on-dask`` on it. Only small things cross the flow process: month plans
(a few hundred bytes), model weights (about 0.5 MB) and scores. Chunk
statistics (about 1 MB each) move worker to worker as Dask futures.
"""

# No `from __future__ import annotations` here: Prefect builds a pydantic model of a flow's parameters from
# its annotations, and a deployment's run loads this file under another module name, where postponed
# (string) annotations such as `date` cannot be resolved.

import time
from collections.abc import Iterable
from dataclasses import dataclass
from logging import Logger, LoggerAdapter
from typing import TYPE_CHECKING, Any

import distributed
import numpy as np
from distributed.scheduler import KilledWorker
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Completed

from pipeline.cluster import ClusterSpec
from pipeline.core import batching, cv, render, screening, stats, training
from pipeline.core.boosted import TERMS as BOOSTED_TERMS
from pipeline.core.boosted import BoostedModel
from pipeline.core.config import Reading, TrainConfig
from pipeline.core.cv import CVReport, Features
from pipeline.core.features import FeatureSpec
from pipeline.core.model import AnyModel, Model
from pipeline.core.months import Month, format_months
from pipeline.core.results import RunResult
from pipeline.core.terms import quantile_columns, quantile_edges
from pipeline.edge import chunks, lineage, reader, stats_cache, tracking
from pipeline.edge.baseline import COUNTS_FILE, train_counts_bytes
from pipeline.edge.metrics import METRICS_FILE, metrics_bytes
from pipeline.edge.model_files import boosted_objects, estimator_objects, load_any, model_objects
from pipeline.edge.run_files import publish_run
from pipeline.edge.sources import is_local
from pipeline.errors import PipelineError
from pipeline.runtime import cluster_watch
from pipeline.runtime.api_watch import writing
from pipeline.runtime.cluster_runner import dask_runner
from pipeline.runtime.cluster_watch import watched
from pipeline.runtime.interrupts import interrupt_wins
from pipeline.runtime.prefect_api import ui_url

if TYPE_CHECKING:  # row_fits imports scikit-learn: only the tasks that fit estimators load it
    from pipeline.edge.row_fits import FitResult

RunLogger = Logger | LoggerAdapter[Logger]


def _retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups; a PipelineError (missing file, bad schema) is final."""
    try:
        state.result()
    except PipelineError:
        return False
    except Exception:
        return True
    return False


locate_month = task(
    name="locate-month", retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_unless_bad_input, cache_policy=NO_CACHE
)(reader.locate)


#: One chunk's work: its month's plan, its row groups, its folds.
ChunkWork = tuple[reader.MonthPlan, reader.Chunk, int]


@dataclass(frozen=True)
class CachedMonth:
    """A month whose every chunk had a statistics cache entry when the run listed the cache: it gets no task; each task
    that needs its statistics reads the compact entries where it runs (about 10 ms a chunk) instead of receiving them."""

    location: str
    work: tuple[ChunkWork, ...]
    spec: FeatureSpec
    seed: int

    @property
    def month(self) -> Month:
        return self.work[0][0].file.month

    def statistics(self) -> stats.Stats:
        """The month's statistics: an entry gone or damaged since the listing is a miss, computed and stored again."""
        return stats.combine([chunks.cached_statistics(self.location, p, c, self.spec, f, self.seed)[0] for p, c, f in self.work])


#: Where a month's statistics are: a future of a task's tuple and the month's place in it, or of the month's own
#: statistics (None), or a CachedMonth (None). A plain tuple: Dask resolves futures inside tuples and lists, not
#: inside dataclasses.
MonthRef = tuple[Any, int | None]


def _part_of(ref: MonthRef) -> stats.Part:
    """A month's statistics as its task returned them: packed (see :class:`pipeline.core.stats.Packed`), or whole."""
    value, index = ref
    if isinstance(value, CachedMonth):
        return value.statistics()
    found: stats.Part = value if index is None else value[index]
    return found


def _stats_of(ref: MonthRef) -> stats.Stats:
    part = _part_of(ref)
    return part.unpack() if isinstance(part, stats.Packed) else part


def _all_stats(refs: list[MonthRef]) -> list[stats.Part]:
    """Months' statistics to add up: packed ones are added without unpacking each."""
    return [_part_of(ref) for ref in refs]


def named(task_: Any, months: Iterable[Month], suffix: str = "") -> Any:
    """``task_`` with the months it covers in its run names, the UI's per-month progress.

    Names, not tags: Prefect asks its API for tag concurrency slots before every
    tagged task run, through a new service per tag set, which cost 0.5-1 s a task
    on 2 cores (a 12-month run took 11-15 s instead of 3).
    """
    return task_.with_options(task_run_name=f"{task_.name} {format_months(months)}{suffix}")


def _reading(task_: Any, refs: list[MonthRef]) -> Any:
    """``task_`` named with the months it reads from the statistics cache: in the UI they have no chunk task of their own."""
    months = [value.month for value, _ in refs if isinstance(value, CachedMonth)]
    return named(task_, months, " (cached)") if months else task_


@task(name="chunk-stats", cache_policy=NO_CACHE, persist_result=False)
def chunk_stats(work: list[ChunkWork], spec: FeatureSpec, seed: int, cache_location: str | None) -> Any:
    """Statistics of one or more chunks (plan, chunk, folds): a tuple, one per chunk, each read from the statistics cache at
    ``cache_location`` or computed and stored. The state is named "Cached" when every chunk was a hit; its message counts them.

    Several small months share one task, as a task costs more than reading a small month. The worker reads and writes the
    cache itself: no Prefect result round trip, and the location is a string, so workers on other machines reach the same one.
    """
    found = [chunks.cached_statistics(cache_location, plan, chunk, spec, folds, seed) for plan, chunk, folds in work]
    hits = sum(hit for _, hit in found)
    name = "Cached" if hits == len(found) and cache_location is not None else "Completed"
    packed = tuple(value for value, _ in found)
    return Completed(data=packed, name=name, message=f"{hits} of {len(found)} chunks from the statistics cache")


def _cache_hits(message: str | None) -> int:
    """Chunks a ``chunk-stats`` run read from the cache (the count its state message starts with)."""
    return int((message or "0").split(" ", 1)[0])


#: Kept rows per training month that quantile bins' edges are taken from (a uniform sample; a smaller month gives all).
QUANTILE_SAMPLE = 200_000


@task(name="quantile-sample", cache_policy=NO_CACHE, persist_result=False)
def quantile_sample(plan: reader.MonthPlan, columns: tuple[str, ...], seed: int) -> np.ndarray:
    """A month's kept rows' ``columns`` (nulls as 0), at most :data:`QUANTILE_SAMPLE` of them, as training keeps rows."""
    return chunks.load_rows([plan], FeatureSpec(numeric=columns), 1, seed, QUANTILE_SAMPLE).x


def _fix_quantile_edges(config: TrainConfig, located: dict[Month, reader.MonthPlan], train: list[Month], logger: RunLogger) -> TrainConfig:
    """The config with its quantile bins' edges measured on the training months, before the pass: the edges are part
    of the terms from then on, so the statistics, the model file and the scorer all use the same ones."""
    wanted = quantile_columns(config.feature_spec().terms)
    if not wanted:
        return config
    columns = tuple(sorted(wanted))
    samples = [named(quantile_sample, [m]).submit(located[m], columns, config.seed) for m in train]
    values = np.concatenate([future.result() for future in samples])
    edges = {(c, n): quantile_edges(values[:, j], n) for j, c in enumerate(columns) for n in sorted(wanted[c])}
    for (column, count), fixed in edges.items():
        logger.info("%s:q%d: %d edges from %s rows, %.4g to %.4g", column, count, len(fixed), f"{len(values):,}", fixed[0], fixed[-1])
    return config.with_quantile_edges(edges)


@task(name="month-stats", cache_policy=NO_CACHE)
def month_stats(parts: list[Any]) -> stats.Packed:
    """A month of several chunk tasks (each a tuple of one chunk's packed statistics): the sum of its chunks, packed."""
    return stats.add_packed([part for (part,) in parts])


@task(name="month-rows", cache_policy=NO_CACHE)
def month_rows(months: list[Month], refs: list[MonthRef]) -> tuple[screening.MonthRows, ...]:
    """Rows read and dropped per month."""
    return screening.of(months, _all_stats(refs))


#: Months one ``pool-stats`` task adds at most: packed, a generated 3.2M-row month with 5 folds and 216 levels is ~20 MB.
POOL_FAN_IN = 12


@task(name="pool-stats", cache_policy=NO_CACHE)
def pool_stats(refs: list[MonthRef]) -> stats.Part:
    """Months added up: the CV tasks and the final fit each receive one statistics, not every month's; packed when
    that is smaller (a generated year at 5 folds and 216 levels fills 12% of its 41M cells: 39 MB instead of 163)."""
    return stats.pool(_all_stats(refs))


def _pooled(months: list[Month], per_month: dict[Month, MonthRef]) -> MonthRef:
    """Where the sum of ``months``' statistics will be: one month's own, else ``pool-stats`` tasks of up to
    ``POOL_FAN_IN`` months each, in a tree, so no task holds more than that many months at once."""
    level = [([m], per_month[m]) for m in months]
    while len(level) > 1:
        groups = [level[i : i + POOL_FAN_IN] for i in range(0, len(level), POOL_FAN_IN)]
        level = []
        for group in groups:
            covered = [m for group_months, _ in group for m in group_months]
            level.append((covered, (named(pool_stats, covered).submit([ref for _, ref in group]), None)))
    return level[0][1]


@task(name="fit", cache_policy=NO_CACHE)
def fit(pooled: MonthRef, kept_rows: list[int], alpha: float, zones: tuple[str, ...]) -> training.Fit:
    """Solve ridge at ``alpha`` on the training months' pooled statistics (``kept_rows``: each month's, to name an empty one)."""
    return training.fit_pooled(_stats_of(pooled), kept_rows, alpha, zones)


@task(name="score", cache_policy=NO_CACHE)
def score(fitted: training.Fit, ref: MonthRef) -> tuple[int, float]:
    """Rows and RMSE on the validation month."""
    return training.score(fitted, _stats_of(ref))


@task(name="cv-kfold", cache_policy=NO_CACHE)
def cv_kfold(
    pooled: MonthRef,
    kept_rows: list[int],
    val: MonthRef,
    folds: list[int],
    alphas: list[float],
    refits: list[tuple[Features | None, float]],
    sets: training.FeatureSets,
) -> tuple[list[cv.CVScore], list[training.Candidate]]:
    """A worker slot's share of the K-fold CV (and of the candidates' refits)."""
    return training.kfold_group(_part_of(pooled), kept_rows, _stats_of(val), folds, alphas, refits, sets)


@task(name="cv-window", cache_policy=NO_CACHE)
def cv_window(earlier: list[MonthRef], month: MonthRef, fold: int, alphas: list[float], zones: tuple[str, ...]) -> list[cv.CVScore]:
    """One rolling-origin window of the time CV."""
    return training.window_scores(_all_stats(earlier), _stats_of(month), fold, alphas, zones)


@task(name="estimator-fold", cache_policy=NO_CACHE)
def estimator_fold(
    plans: list[reader.MonthPlan], spec: Any, model: str, folds: int, fold: int, seed: int, max_rows: int | None
) -> cv.CVScore:
    """One CV fold of a row-fitted estimator, reading the months on this worker."""
    from pipeline.edge import row_fits  # scikit-learn loads only on workers that fit estimators

    return row_fits.fold_score(plans, spec, model, folds, fold, seed, max_rows)


@task(name="estimator-fit", cache_policy=NO_CACHE)
def estimator_fit(
    train: list[reader.MonthPlan], val: reader.MonthPlan, spec: Any, model: str, seed: int, max_rows: int | None
) -> "FitResult":
    """Fit a row-fitted estimator on all (capped) training rows and score the validation month; HGB's trees come back as skops bytes."""
    from pipeline.edge import row_fits

    return row_fits.fit_and_validate(train, val, spec, model, seed, max_rows)


def _locate(config: TrainConfig, months: list[Month], plans: list[reader.MonthPlan] | None) -> dict[Month, reader.MonthPlan]:
    """Plans of every month: the caller's, else local footers read here (milliseconds, no task's
    overhead), else remote months fetched by tasks in parallel, with retries.
    """
    if plans is not None:
        by_month = {p.file.month: p for p in plans}
        if set(months) <= set(by_month):
            return {m: by_month[m] for m in months}
    return locate_months(config, months, config.feature_spec().columns())


def locate_months(config: Reading, months: list[Month], columns: tuple[str, ...]) -> dict[Month, reader.MonthPlan]:
    """Local footers are read here (milliseconds, no task's overhead); remote months are fetched by tasks in parallel, with retries."""
    where = (config.source, config.taxi)
    if is_local(config.source):
        return {m: reader.locate(*where, m, columns, config.cache_dir, config.http_timeout) for m in months}
    futures = {m: locate_month.submit(*where, m, columns, config.cache_dir, config.http_timeout) for m in months}
    return {m: f.result() for m, f in futures.items()}


def _outcome(state: Any) -> tuple[bool, str | None]:
    """Whether a task run's final state is a failure, and its message: run where the state is, so its result stays there."""
    return state.is_failed() or state.is_crashed(), state.message


def raise_first_failure(futures: list[Any], described: dict[Any, str] | None = None) -> list[str | None]:
    """Wait for ``futures`` in the order they finish; the first that failed raises its task's own exception here.
    Returns each task's state message, in the order given. A task of ``described`` (future: what it reads) that
    took its worker down at every try fails in one line naming what it reads (:func:`cluster_watch.killed_worker`).

    Without this, a chunk task's PipelineError (the file and row groups at
    fault) reaches the user as Prefect's ``UnfinishedRun`` of a downstream task
    that was left pending, and only once every earlier future is done. Waiting
    costs nothing: everything after needs them. On Dask the state is looked at
    on the worker that holds it: ``future.wait()`` would bring the task's
    result (a chunk's statistics, megabytes) to the flow process.
    """
    messages: dict[Any, str | None] = {}
    for future in as_completed(futures):
        wrapped = getattr(future, "wrapped_future", None)
        if isinstance(wrapped, distributed.Future):
            try:
                failed, messages[future] = wrapped.client.submit(_outcome, wrapped, pure=False).result()
            except KilledWorker as exc:
                if described is None or future not in described:
                    raise
                raise PipelineError(cluster_watch.killed_worker(described[future], exc)) from None
        else:
            future.wait()  # takes the state the runner returned; without it ``state`` asks the API, which lags behind remote workers
            failed, messages[future] = _outcome(future.state)
        if failed:
            future.result()
    return [messages[future] for future in futures]


def _rows_of(work: list[ChunkWork]) -> str:
    """The rows a chunk task reads, for its error: ``rows 0..2,999,999 of /data/yellow_tripdata_2023-01.parquet`` (and how many more)."""
    (plan, chunk, _), more = work[0], len(work) - 1
    where = f"rows {chunk.offset:,}..{chunk.offset + chunk.rows - 1:,} of {plan.file.location}"
    return where + (f" and {more} more month(s)" if more else "")


def _month_statistics(config: TrainConfig, plans: dict[Month, reader.MonthPlan], val: Month, slots: int) -> dict[Month, MonthRef]:
    """Submit the statistics tasks; return where each month's statistics will be (once every chunk succeeded).

    A month of several chunks gets a task per chunk and a ``month-stats`` task that adds them; months of one chunk
    share ``chunk-stats`` tasks of up to ``chunk_rows`` rows (a task per slot at least), tagged with their months, so
    a long history of small files costs its data, not its file count. Training months keep per-fold statistics when
    K-fold CV is on; that is the whole cost of CV on the data side. With the cache on, each chunk has its own entry;
    one listing of the cache finds the months whose every chunk has one: they get no task (a :class:`CachedMonth`),
    as a task costs more than reading them. Once the chunk tasks are done, the cache is pruned to its bound (this
    run's entries kept) and its size logged.
    """
    spec = config.feature_spec()
    folds = config.stats_folds
    location = stats_cache.resolve(config.stats_cache, config.cache_dir) if config.cache else None
    present = stats_cache.StatsCache(location).keys() if location is not None else set()
    refs: dict[Month, MonthRef] = {}
    reads: list[Any] = []
    reading: dict[Any, str] = {}  # each chunk task: the rows it reads
    small: list[tuple[Month, ChunkWork]] = []
    keys: set[str] = set()
    cached = 0
    for month, plan in plans.items():
        work = [(plan, part, folds if month != val else 1) for part in reader.plan(plan.layout, config.chunk_rows)]
        month_keys = {chunks.cache_key(p, c, spec, f, config.seed) for p, c, f in work}
        keys |= month_keys
        if location is not None and month_keys <= present:
            refs[month], cached = (CachedMonth(location, tuple(work), spec, config.seed), None), cached + len(work)
        elif len(work) == 1:
            small.append((month, work[0]))
        else:
            by_chunk = [named(chunk_stats, [month], f" {i}/{len(work)}") for i in range(1, len(work) + 1)]
            futures = [task_.submit([one], spec, config.seed, location) for task_, one in zip(by_chunk, work)]
            reading.update({future: _rows_of([one]) for future, one in zip(futures, work)})
            refs[month] = (named(month_stats, [month]).submit(futures), None)
            reads += futures
    rows = [work[1].rows for _, work in small]
    for batch in batching.pack(rows, batching.target(rows, config.chunk_rows, slots)):
        months = [small[i][0] for i in batch]
        future = named(chunk_stats, months).submit([small[i][1] for i in batch], spec, config.seed, location)
        refs.update({month: (future, index) for index, month in enumerate(months)})
        reads.append(future)
        reading[future] = _rows_of([small[i][1] for i in batch])
    month_sums = [ref for ref, index in refs.values() if index is None and not isinstance(ref, CachedMonth)]
    messages = raise_first_failure([*reads, *month_sums], reading)  # else a failed month surfaces as a CV task's UnfinishedRun
    if location is not None:
        pruned = stats_cache.StatsCache(location).prune(max_bytes=config.stats_cache_max_bytes, in_use=keys)
        get_run_logger().info(
            "statistics cache %s; %d of %d chunks read from it, %d old entries pruned",
            pruned.left.describe(),
            cached + sum(_cache_hits(message) for message in messages[: len(reads)]),
            len(keys),
            pruned.removed,
        )
    return {month: refs[month] for month in plans}


def _cross_validate(
    config: TrainConfig,
    train: list[Month],
    val: Month,
    per_month: dict[Month, MonthRef],
    pooled: MonthRef,
    kept_rows: list[int],
    slots: int,
) -> tuple[list[cv.CVScore], dict[tuple[Features | None, float], training.Candidate]]:
    """Spread the folds (K-fold: and the candidates' refits) over the cluster, one task per worker slot."""
    alphas = unmapped(list(config.alphas))
    if config.cv == "kfold":
        sets = training.FeatureSets(config.feature_spec(), config.feature_sets() if config.candidates else None)
        groups = min(config.folds, slots)
        folds = [list(range(g, config.folds, groups)) for g in range(groups)]
        pairs = [(features, alpha) for features in sets.options() for alpha in config.alphas]
        refits = training.share_refits(folds, len(config.alphas), pairs)
        groups_run = _reading(cv_kfold, [*per_month.values()]).map(
            unmapped(pooled), unmapped(kept_rows), unmapped(per_month[val]), folds, alphas, refits, unmapped(sets)
        )
        raise_first_failure(groups_run)
        results = groups_run.result()
        return [s for scores, _ in results for s in scores], {(c.features, c.alpha): c for _, found in results for c in found}
    windows = range(1, len(train))
    futures = _reading(cv_window, [per_month[m] for m in train]).map(
        [[per_month[m] for m in train[:i]] for i in windows],
        [per_month[train[i]] for i in windows],
        windows,
        alphas,
        unmapped(config.feature_spec().zones),
    )
    raise_first_failure(futures)
    return [s for group in futures.result() for s in group], {}


@dataclass(frozen=True)
class Trained:
    """A training path's outcome, its alpha and feature set, its CV, and the validation month's statistics (linear only)."""

    outcome: training.Outcome
    alpha: float | None
    features: Features
    report: CVReport | None
    val_stats: MonthRef | None = None  # where the validation month's statistics are (of the columns read)
    estimator_bytes: bytes | None = None  # a row-fitted model with no linear form, as model.skops bytes
    boosted_bytes: bytes | None = None  # an xgboost model, as model.ubj bytes
    months: tuple[screening.MonthRows, ...] = ()  # rows read and dropped per month (linear path)


def _train_linear(
    config: TrainConfig, plans: dict[Month, reader.MonthPlan], train: list[Month], val: Month, slots: int, logger: RunLogger
) -> Trained:
    """The exact path: statistics per month; CV from them (K-fold CV also refits every
    candidate alpha and feature set, 5 ms each); else one fit and one score task at the alpha given."""
    per_month = _month_statistics(config, plans, val, slots)
    refs = [per_month[m] for m in [*train, val]]
    counted = _reading(month_rows, refs).submit([*train, val], refs)  # one task: a few ints a month
    pooled = _pooled(train, per_month)
    kept = [m.rows_kept for m in counted.result()[: len(train)]]
    report: CVReport | None = None
    alpha, features = config.alphas[0], None
    candidates: dict[tuple[Features | None, float], training.Candidate] = {}
    if config.cross_validates:
        scores, candidates = _cross_validate(config, train, val, per_month, pooled, kept, slots)
        chosen_summary = cv.best(cv.summarize(scores))
        alpha, features = chosen_summary.alpha or 0.0, chosen_summary.features
        report = CVReport.of(config.cv, scores, alpha, features)
        logger.info("%s: %s", render.cv_title(report), ", ".join(" ".join(row[:-2]) for row in render.cv_rows(report)))
    if (features, alpha) in candidates:
        chosen = candidates[features, alpha]
        result, val_rows, val_rmse = chosen.fit, chosen.val_rows, chosen.val_rmse
    else:
        fitted: Any = _reading(fit, [per_month[m] for m in train]).submit(pooled, kept, alpha, config.feature_spec().zones)
        validated = _reading(score, [per_month[val]]).submit(fitted, per_month[val])
        result = fitted.result()
        val_rows, val_rmse = validated.result()
    empty = training.empty_of({**{reader.label(plans[m]): n for m, n in zip(train, result.month_rows)}, reader.label(plans[val]): val_rows})
    outcome = training.Outcome(result.weights, sum(result.month_rows), result.rmse, val_rows, val_rmse, empty, result.pair_count)
    terms = config.model_terms() if features is None else features
    return Trained(outcome, alpha, terms, report, per_month[val], months=counted.result())


def _train_estimator(
    config: TrainConfig, plans: dict[Month, reader.MonthPlan], train: list[Month], val: Month, logger: RunLogger
) -> Trained:
    """Row-fitted estimators: each fold is a task reading the months on its own worker."""
    spec, train_plans = config.feature_spec(), [plans[m] for m in train]
    folds = None
    if config.cross_validates:  # submitted first, so the folds get the workers before the final fit
        folds = estimator_fold.map(
            unmapped(train_plans),
            unmapped(spec),
            unmapped(config.model),
            unmapped(config.folds),
            range(config.folds),
            unmapped(config.seed),
            unmapped(config.max_rows),
        )
    final = estimator_fit.submit(train_plans, plans[val], spec, config.model, config.seed, config.max_rows)
    raise_first_failure([*(folds or []), final])
    report = None
    if folds is not None:
        report = CVReport.of("kfold", folds.result(), None)
        (summary,) = report.by_alpha
        logger.info("CV RMSE of %s: %.4f ± %.4f", config.model, summary.mean_rmse, summary.std_rmse)
    fitted = final.result()
    return Trained(fitted.outcome, None, config.model_terms(), report, estimator_bytes=fitted.estimator_bytes)


def _boosted_params(config: TrainConfig) -> Any:
    from pipeline.core.boosted import BoostedParams

    return BoostedParams(rounds=config.xgb_rounds, seed=config.seed)


def _train_boosted(config: TrainConfig, plans: dict[Month, reader.MonthPlan], train: list[Month], val: Month, logger: RunLogger) -> Trained:
    """XGBoost on the whole cluster (:mod:`pipeline.flows.boosted`): the final fit and, with K-fold CV on, the
    hold-out score on fold 0 of the linear path's split (one more fit, not K: each uses every worker).

    One fit at a time: each puts one XGBoost task on every worker and they all wait for each other, so two fits
    sharing single-threaded workers could each hold half of them.
    """
    from pipeline.flows import boosted as boosted_flows

    train_plans, params = [plans[m] for m in train], _boosted_params(config)
    final = boosted_flows.train_boosted.submit(train_plans, plans[val], params, config.chunk_rows)
    holdout = None
    if config.cross_validates:  # after the final fit, never beside it: two collectives on the same workers can deadlock
        holdout = boosted_flows.holdout_boosted.submit(
            train_plans, params, config.folds, config.seed, config.chunk_rows, wait_for=[final], return_state=False
        )
    raise_first_failure([*([holdout] if holdout is not None else []), final])
    report = None
    if holdout is not None:
        report = CVReport.of("kfold", [holdout.result()], None)
        logger.info("hold-out RMSE of xgboost on fold 0 of %d: %.4f", config.folds, report.scores[0].rmse)
    fitted = final.result()
    logger.info(
        "xgboost.dask: %d rounds on %d rows over %d worker(s), %d thread(s), in %.1f s", params.rounds, fitted.train_rows,
        fitted.workers, fitted.threads, fitted.seconds,
    )  # fmt: skip
    empty = training.empty_of({f"months {format_months(train)}": fitted.train_rows, reader.label(plans[val]): fitted.val_rows})
    outcome = training.Outcome(None, fitted.train_rows, fitted.train_rmse, fitted.val_rows, fitted.val_rmse, empty)
    return Trained(outcome, None, BOOSTED_TERMS, report, boosted_bytes=fitted.model or None)


def _challenge_with_boosted(
    config: TrainConfig, plans: dict[Month, reader.MonthPlan], train: list[Month], val: Month, linear: Trained, logger: RunLogger
) -> Trained:
    """The boosted challenger of a linear CV: xgboost on fold 0's training rows, scored on fold 0's held-out rows, beside
    the chosen linear candidate's score on the same rows; the better model is the run's (a final fit if xgboost)."""
    from pipeline.flows import boosted as boosted_flows

    assert linear.report is not None  # a boosted challenger needs K-fold CV (TrainConfig refuses it otherwise)
    chosen = [s for s in linear.report.scores if s.fold == 0 and s.alpha == linear.report.chosen_alpha]
    chosen = [s for s in chosen if s.features == linear.report.chosen_features] or chosen
    linear_rmse = chosen[0].rmse
    train_plans, params = [plans[m] for m in train], _boosted_params(config)
    holdout = boosted_flows.holdout_boosted.submit(train_plans, params, config.folds, config.seed, config.chunk_rows)
    raise_first_failure([holdout])
    boosted_rmse = holdout.result().rmse
    winner = "xgboost" if boosted_rmse < linear_rmse else "linear"
    logger.info("boosted challenger on fold 0's held-out rows: xgboost %.4f, linear %.4f: %s kept", boosted_rmse, linear_rmse, winner)
    if winner == "linear":
        return linear
    boosted = _train_boosted(config.model_copy(update={"folds": 0}), plans, train, val, logger)
    return Trained(boosted.outcome, None, BOOSTED_TERMS, linear.report, boosted_bytes=boosted.boosted_bytes, months=linear.months)


def _publish(result: RunResult) -> None:
    """The run's summary (and every CV score) as artifacts of the flow run, for the Prefect UI."""
    create_markdown_artifact(key="training-summary", markdown=render.markdown(result), description=render.title(result))
    if result.cv is not None:
        create_table_artifact(
            key="cv-scores",
            table=render.cv_table(result.cv),
            description=f"{result.cv.kind} CV: RMSE (minutes), rows and seconds per fold and alpha",
        )


def track_training(config: TrainConfig, result: RunResult, files: dict[str, bytes], logger: RunLogger) -> tracking.Tracked:
    """The run, its files (name: bytes) and its flow run's UI link as an MLflow run. Called in the flow process: the tracking
    URI may come from its environment (MLFLOW_TRACKING_URI), which remote Dask workers do not share."""
    uri = tracking.check(config.mlflow_uri)
    tags = {tracking.FLOW_RUN_TAG: result.flow_run_id, tracking.FLOW_RUN_URL_TAG: ui_url(result.flow_run_id)}
    tracked = tracking.log_training(uri, config.mlflow_experiment, config, result, tags, files)
    logger.info("MLflow run %s in experiment %r at %s", tracked.run_id, config.mlflow_experiment, tracked.uri)
    return tracked


@task(name="champion-score", cache_policy=NO_CACHE)
def champion_score(champion: AnyModel, val_ref: MonthRef | None, read: FeatureSpec, val: reader.MonthPlan) -> float | None:
    """The champion's RMSE on the validation month: exactly from its statistics when they hold the champion's
    terms (no second read), else from its rows. None when it cannot be scored (another duration filter)."""
    if champion.spec.min_minutes != FeatureSpec().min_minutes or champion.spec.max_minutes != FeatureSpec().max_minutes:
        return None
    if isinstance(champion, Model) and val_ref is not None and set(champion.spec.terms) <= set(read.terms):
        projected = training.project(_stats_of(val_ref), read, champion.spec)
        return training.score(training.Fit(champion.weights, [], 0.0), projected)[1]
    if isinstance(champion, BoostedModel):
        from pipeline.edge import boosted_rows

        return boosted_rows.model_rmse(champion, val)
    from pipeline.edge import row_fits

    return row_fits.model_rmse(champion, val)


@flow(name="train-on-dask", validate_parameters=False)
def train_on_dask(
    config: TrainConfig, plans: list[reader.MonthPlan] | None = None, slots: int = 1, champion: str | None = None
) -> RunResult:
    """Train on the training months, validate on the next, save model and metrics (on the flow's task runner).

    With ``champion`` (a model folder), also score that model on the same validation month, exactly.
    """
    with interrupt_wins(), watched():  # after Ctrl-C, whatever the interrupt broke is the interrupt: the run is Crashed
        return _train_on_dask(config, plans, slots, champion)


def _train_on_dask(config: TrainConfig, plans: list[reader.MonthPlan] | None, slots: int, champion: str | None) -> RunResult:
    logger = get_run_logger()
    started = time.perf_counter()
    train, val = config.months()
    logger.info("training %s on %s, validating on %s, from %s", config.model, ", ".join(map(str, train)), val, config.source)
    located = _locate(config, [*train, val], plans)
    config = _fix_quantile_edges(config, located, train, logger)
    champion_model = load_any(champion) if champion is not None else None
    if config.model == "linear":
        trained = _train_linear(config, located, train, val, slots, logger)
        if config.boosted_challenger:
            trained = _challenge_with_boosted(config, located, train, val, trained, logger)
    elif config.model == "xgboost":
        trained = _train_boosted(config, located, train, val, logger)
    else:
        trained = _train_estimator(config, located, train, val, logger)
    outcome = trained.outcome
    if outcome.empty:
        raise PipelineError(f"{outcome.empty[0]}: no trips left after the duration filter")
    for found in screening.unusual(trained.months):
        logger.warning(render.drop_warning(found))
    champion_rmse = None
    if champion_model is not None:
        read = config.feature_spec()
        champion_rmse = champion_score.submit(champion_model, trained.val_stats, read, located[val]).result()
    result = RunResult(
        model="xgboost" if trained.boosted_bytes is not None else config.model,
        taxi=config.taxi,
        train_months=tuple(train),
        val_month=val,
        alpha=trained.alpha,
        numeric=FeatureSpec.of(trained.features).numeric,
        train_rows=outcome.train_rows,
        val_rows=outcome.val_rows,
        train_rmse=outcome.train_rmse,
        val_rmse=outcome.val_rmse,
        seconds=time.perf_counter() - started,
        flow_run_id=str(flow_run.id),
        cv=trained.report,
        champion_val_rmse=champion_rmse,
        months=trained.months,
        features=trained.features,
        inputs=lineage.data_inputs(
            located,
            train,
            val,
            config.feature_spec() if config.model == "linear" else None,
            config.chunk_rows,
            config.stats_folds,
            config.seed,
        ),
    )
    _publish(result)
    spec = FeatureSpec.of(trained.features)
    metadata = {"metrics": result.to_dict(), "source": config.source, "run_id": result.flow_run_id}
    objects: dict[str, bytes] = {}
    if outcome.pair_count is not None:
        objects[COUNTS_FILE] = train_counts_bytes(outcome.pair_count)
    if outcome.weights is not None:
        objects.update(model_objects(Model(outcome.weights, spec, metadata)))
    elif trained.estimator_bytes is not None:
        objects.update(estimator_objects(trained.estimator_bytes, spec, metadata, config.output))
    elif trained.boosted_bytes is not None:
        objects.update(boosted_objects(trained.boosted_bytes, _boosted_params(config), {**metadata, "taxi": config.taxi}, config.output))
    else:
        logger.warning("%s returned no model to save: writing metrics only", config.model)
    metrics = metrics_bytes(result)
    with writing():  # a lost Prefect API ends the run after this, never during it
        publish_run(config.output, result.flow_run_id, objects, metrics)
    if config.mlflow:
        track_training(config, result, {**objects, METRICS_FILE: metrics}, logger)
    logger.info(
        "val RMSE %.4f min on %d rows; train RMSE %.4f on %d rows; %.1f s",
        result.val_rmse,
        result.val_rows,
        result.train_rmse,
        result.train_rows,
        result.seconds,
    )
    return result


@flow(name="train-trip-duration", validate_parameters=True)
def train_flow(config: TrainConfig, cluster: ClusterSpec | None = None, plans: list[reader.MonthPlan] | None = None) -> RunResult:
    """Train on a Dask cluster this run resolves itself: ``cluster``, else ``DASK_SCHEDULER_ADDRESS``, else a LocalCluster.

    ``plans`` are month plans the caller already read (footers are read once).
    """
    with interrupt_wins(), dask_runner(cluster) as runner:
        return train_on_dask.with_options(task_runner=runner.task_runner)(config, plans, runner.slots)
