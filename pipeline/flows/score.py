"""Batch scoring on Dask, and the monthly monitoring report that comes with it.

``score-trip-duration`` takes a :class:`~pipeline.core.config.ScoreConfig`, resolves the cluster (as training
does) and runs ``score-on-dask``: one task per row-group chunk, each predicting its rows and
writing its own parquet part, then each month's parts swapped in whole. The
chunks also count what the report needs (error over the rows training would
keep, trips per pair), so the report costs no second read.
"""

# No `from __future__ import annotations` here: Prefect builds a pydantic model of a flow's parameters from
# its annotations, and a deployment's run loads this file under another module name.

import base64
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from functools import reduce
from operator import add
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pipeline.cluster import ClusterSpec
from pipeline.core import render
from pipeline.core.config import ScoreConfig
from pipeline.core.model import AnyModel
from pipeline.core.monitoring import MonthCounts, MonthReport, month_report
from pipeline.core.months import Month
from pipeline.edge import predictions, reader
from pipeline.edge.baseline import load_train_counts
from pipeline.edge.model_files import load_any
from pipeline.edge.registry import model_folder, model_title
from pipeline.edge.report import prepare as prepare_report
from pipeline.edge.report import write_report
from pipeline.errors import PipelineError
from pipeline.flows.train import locate_months, named, raise_first_failure
from pipeline.runtime.api_watch import writing
from pipeline.runtime.cluster_runner import dask_runner
from pipeline.runtime.cluster_watch import watched
from pipeline.runtime.interrupts import interrupt_wins

log = logging.getLogger(__name__)

score_chunk = task(name="score-chunk", cache_policy=NO_CACHE)(predictions.score_chunk)


def _added(parts: list[Any]) -> MonthCounts:
    """A month's counts: its chunks' added here (a task of its own cost more than the sum of ~0.6 MB a chunk)."""
    counts: MonthCounts = reduce(add, (part.result() for part in parts))
    return counts


@dataclass(frozen=True)
class ScoreResult:
    """A scoring run: where its predictions went, and each month's report."""

    output: str
    model: str  # the model folder scored with (a registry version's folder, or the one given)
    rows: int
    seconds: float
    months: tuple[MonthReport, ...]
    flow_run_id: str

    @property
    def breaches(self) -> int:
        return sum(len(m.breaches) for m in self.months)


@flow(name="score-on-dask", validate_parameters=False)
def score_on_dask(config: ScoreConfig, model_dir: str, run: str) -> ScoreResult:
    """Score ``config.months`` with the model in ``model_dir`` on the flow's task runner; write parts and the report.

    Parts go to the ``run``'s staging folder; once every chunk is written, each month's parts are
    swapped in (here: renames, or server-side copies). A failed chunk leaves every month as it was.
    """
    with interrupt_wins(), watched():  # after Ctrl-C, whatever the interrupt broke is the interrupt: the run is Crashed
        started = time.perf_counter()
        threading.Thread(target=prepare_report, name="report-prepare", daemon=True).start()  # ~0.5 s, beside the tasks
        model = load_any(model_dir)
        plans = locate_months(config, list(config.months), model.spec.columns())
        counts = _score_and_publish(model, plans, config.output, run, config.chunk_rows)
        reports = _report(config, model_dir, model.metadata.get("metrics", {}), counts)
        result = ScoreResult(
            config.output, str(model_dir), sum(r.rows for r in reports), time.perf_counter() - started, reports, str(flow_run.id)
        )
        message = "scored %d rows of %d month(s) in %.1f s; %d breach(es)"
        get_run_logger().info(message, result.rows, len(reports), result.seconds, result.breaches)
        return result


def _score_and_publish(
    model: AnyModel, plans: dict[Month, reader.MonthPlan], output: str, run: str, chunk_rows: int
) -> dict[Month, MonthCounts]:
    """Score every chunk into the run's staging; once all are written, publish each month; its counts."""
    staging = predictions.Staging.of(output, run)
    staging.open(plans, run)
    parts: dict[Month, list[Any]] = {}
    for month, plan in plans.items():  # every month's chunks are submitted before any is waited for
        chunks = reader.plan(plan.layout, chunk_rows)
        parts[month] = [  # named with its month, as training's tasks are: "score-chunk 2023-01 1/2"
            named(score_chunk, [month], f" {index + 1}/{len(chunks)}").submit(
                plan, chunk, model, staging.month(month).child(f"part-{index:05d}.parquet"), staging
            )
            for index, chunk in enumerate(chunks)
        ]
    raise_first_failure([part for month_parts in parts.values() for part in month_parts])
    with writing():  # a lost Prefect API ends the run after this, never during it
        for month in plans:
            predictions.publish_month(staging.month(month), predictions.month_folder(output, month))
        staging.discard()  # its mark and empty folders
    return {month: _added(month_parts) for month, month_parts in parts.items()}


def _report(config: ScoreConfig, model_dir: str, metrics: dict[str, Any], counts: dict[Month, MonthCounts]) -> tuple[MonthReport, ...]:
    """Each month's error and drift: warnings in the log, report files, and the flow run's artifacts."""
    logger = get_run_logger()
    output, max_psi, max_rmse_ratio = config.output, config.max_psi, config.max_rmse_ratio
    train_rmse = float(metrics.get("train_rmse", float("nan")))
    train_counts = load_train_counts(model_dir)
    reports = tuple(month_report(str(m), c, train_counts, train_rmse, max_psi, max_rmse_ratio) for m, c in counts.items())
    for report in reports:
        for breach in report.breaches:
            logger.warning("month %s: %s", report.month, breach)
    title = f"Monitoring: {len(reports)} month(s) scored with {model_title(model_dir)}"
    markdown = render.monitoring_markdown(title, train_rmse, reports, max_psi, max_rmse_ratio)
    summary = {
        "model": str(model_dir),
        "train_rmse": train_rmse,
        "max_psi": max_psi,
        "max_rmse_ratio": max_rmse_ratio,
        "train_months": metrics.get("train_months"),
        "flow_run_id": str(flow_run.id),
    }
    png = write_report(output, markdown, reports, summary, train_rmse, max_psi, max_rmse_ratio)
    # the UI resolves no path beside report.md: the chart goes inside the artifact, as a data URI
    embedded = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    create_markdown_artifact(
        key="monitoring-report",
        markdown=render.monitoring_markdown(title, train_rmse, reports, max_psi, max_rmse_ratio, chart=embedded),
        description=title,
    )
    create_table_artifact(key="monitoring-months", table=[r.to_dict() for r in reports], description="per month: error and drift")
    return reports


@flow(name="score-trip-duration", validate_parameters=True)
def score_flow(config: ScoreConfig, cluster: ClusterSpec | None = None) -> ScoreResult:
    """Score ``config.months`` with a model folder or a registry's champion; write parts and a report.

    The input is checked by the entry point (:func:`pipeline.preflight.score`) before any server starts;
    called directly, a bad model or month fails the run in one line once it reads them.
    """
    folder = model_folder(config)
    for done in predictions.remove_leftovers(config.output):
        get_run_logger().info("%s: %s, left by a run that was stopped or killed", config.output, done)
    run = uuid.uuid4().hex[:12]
    try:
        with interrupt_wins(), dask_runner(cluster) as runner:
            return score_on_dask.with_options(task_runner=runner.task_runner)(config, folder, run)
    except BaseException:
        with contextlib.suppress(PipelineError):  # the run's own error is the one to tell
            predictions.Staging.of(config.output, run).discard()
        raise
