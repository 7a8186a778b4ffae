"""Retraining that runs itself: the newest published month, a challenger from one read, the champion scored exactly.

``retrain-trip-duration`` is what a scheduled deployment runs. It probes the
source for the newest month published on or before ``as_of`` (default: the
run's scheduled start), validates on it and trains on the ``window`` months
before it, comparing candidate feature sets × alphas × folds from one read. The
current champion is scored on the same validation month from the statistics
already computed (exact, no second pass), and the registry promotes the
challenger only if it is better (a tie keeps the champion). State hooks send a message on failure (and,
if asked, on completion) through a Prefect notification block.
"""

# No `from __future__ import annotations` here: Prefect builds a pydantic model of a flow's parameters from
# its annotations, and a deployment's run loads this file under another module name, where postponed
# (string) annotations such as `date` cannot be resolved.

import logging
import os
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run as current_run

from pipeline.cluster import ClusterSpec
from pipeline.core import render
from pipeline.core.config import DEFAULT_SOURCE, RetrainConfig
from pipeline.core.decisions import Decision
from pipeline.core.model import Model
from pipeline.core.months import Month
from pipeline.core.results import RunResult
from pipeline.edge import reader, storage, tracking
from pipeline.edge.model_files import META_FILE, load_any
from pipeline.edge.registry import Registry, Version
from pipeline.edge.sources import latest_month
from pipeline.errors import PipelineError
from pipeline.flows.train import locate_months, train_on_dask
from pipeline.orchestration.notify import NOTIFY_URL_ENV, send, target_from
from pipeline.runtime.api_watch import writing
from pipeline.runtime.cluster_runner import dask_runner
from pipeline.runtime.interrupts import interrupt_wins
from pipeline.runtime.prefect_api import ui_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainResult:
    """A retraining run: the months it chose, the version it registered and the decision about it."""

    as_of: str
    registry: str
    version: str
    decision: Decision
    run: RunResult

    def to_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of,
            "registry": self.registry,
            "version": self.version,
            "decision": self.decision.to_dict(),
            "run": self.run.to_dict(),
        }


def _as_of(value: date | None) -> date:
    """The given date, else the run's scheduled start (a deployment's schedule), else today."""
    if value is not None:
        return value
    scheduled = current_run.scheduled_start_time
    return scheduled.date() if isinstance(scheduled, datetime) else date.today()


def _champion_terms(champion: Version | None) -> tuple[str, ...]:
    """A linear champion's terms, read beside the candidates so it is scored from the same statistics (another
    champion is scored from its rows)."""
    if champion is not None and storage.exists(champion.path / META_FILE):
        champion_model = load_any(champion.path)
        if isinstance(champion_model, Model):
            return champion_model.spec.terms
    return ()


def _rescore(current: Version, val: reader.MonthPlan) -> float | None:
    """A champion promoted by another run while this one trained: scored on this run's validation month from its rows."""
    if not storage.exists(current.path / META_FILE):
        return None
    from pipeline.edge import row_fits  # scikit-learn (0.9 s of imports) loads only when a rescore happens

    return row_fits.model_rmse(load_any(current.path), val)


def _notify(flow: Any, flow_run: Any, state: Any) -> None:
    """State hook: a message on failure, and on completion when asked. Never fails the run."""
    settings = (flow_run.parameters or {}).get("config") or {}  # as stored: a failed run's may not make a RetrainConfig
    try:
        target = target_from(settings.get("notify"), os.environ.get(NOTIFY_URL_ENV), bool(settings.get("notify_on_completion")))
    except PipelineError as exc:
        log.warning("notification not sent: %s", exc)
        return
    if target is None or (state.is_completed() and not target.on_completion):
        return
    link = ui_url(str(flow_run.id))
    if state.is_completed():
        result = state.result(raise_on_failure=False)
        subject = f"retrain-trip-duration {flow_run.name}: {result.decision.action} {result.version}"
        body = "\n".join([render.decision_line(result.decision), render.title(result.run), link])
    else:
        error = error_line(state)
        subject = f"retrain-trip-duration {flow_run.name} failed"
        body = "\n".join([error, f"as_of {settings.get('as_of') or 'scheduled'}, source {settings.get('source', DEFAULT_SOURCE)}", link])
    send(target, subject, body, log)


def error_line(state: Any) -> str:
    """The failed run's error in the one line the CLI prints for it: a PipelineError's message as it is, anything else
    with its type (not the state message's "Flow run encountered an exception: PipelineError: ..." wrapping)."""
    exc = state.result(raise_on_failure=False)
    if not isinstance(exc, BaseException):
        return (state.message or "failed").splitlines()[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, PipelineError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _say_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """State hook: a deployment's failed run logs its error line, which the terminal serving it shows.

    A run from the CLI prints that line itself, last; a served run has no CLI, and the terminal logging
    (:mod:`pipeline.runtime.terminal_logs`) keeps PipelineErrors' tracebacks and state messages off it.
    """
    if flow_run.deployment_id is not None:
        from prefect.logging.loggers import flow_run_logger

        flow_run_logger(flow_run, flow).error("error: %s", error_line(state))


@flow(
    name="retrain-trip-duration",
    validate_parameters=True,
    on_failure=[_say_failure, _notify],
    on_completion=[_notify],
)
def retrain_flow(config: RetrainConfig | None = None, cluster: ClusterSpec | None = None) -> RetrainResult:
    """Retrain on the newest published month and its ``window`` predecessors; promote the challenger if better.

    ``config`` None: every default, read where the run starts (a scheduled deployment's run with no parameters).
    ``notify`` names a saved notification block (``TYPE/NAME``); the CLI's ``--notify-url`` reaches the hooks
    through the environment instead. With ``mlflow``, the training run is an MLflow run and the decision is added
    to it. A damaged champion or history is refused before training, unless ``repair``: then the challenger
    replaces the damaged champion and a torn history line is cut off.
    """
    config = config or RetrainConfig()
    logger = get_run_logger()
    day = _as_of(config.as_of)
    store = Registry.open(config.registry, create=True)
    store.check_for_commit(config.repair)
    val = latest_month(config.source, config.taxi, Month(day.year, day.month), timeout=config.http_timeout)
    train = [val.shift(-n) for n in range(config.window, 0, -1)]
    champion = None
    try:
        champion = store.champion()
    except PipelineError as exc:  # only with repair: check_for_commit refused it otherwise
        logger.warning("%s; repairing: this run's model replaces it", exc)
    logger.info(
        "as of %s: newest month at the source is %s; training on %s; champion %s",
        day,
        val,
        ", ".join(map(str, train)),
        champion.name if champion else "none (empty registry)",
    )
    with interrupt_wins(), store.staging() as staged:  # after Ctrl-C, whatever the interrupt broke is the interrupt
        training = config.train_config(train, val, staged, _champion_terms(champion))
        plans = reader.locate_local(training)
        with dask_runner(cluster) as runner:
            result = train_on_dask.with_options(task_runner=runner.task_runner)(
                training, plans, runner.slots, str(champion.path) if champion else None
            )

        def score_champion(current: Version) -> float | None:
            if champion is not None and current.name == champion.name:
                return result.champion_val_rmse
            val_plan = plans[-1] if plans else locate_months(training, [val], training.feature_spec().columns())[val]
            return _rescore(current, val_plan)

        with writing():  # a lost Prefect API ends the run after this, never during it
            version, decision = store.commit(staged, score_champion, repair=config.repair)
    outcome = RetrainResult(str(day), str(store.root), version.name, decision, result)
    create_markdown_artifact(
        key="retrain-decision", markdown=render.retrain_markdown(decision, result), description=render.decision_line(decision)
    )
    logger.info("%s", render.decision_line(decision))
    if config.mlflow:
        tracked = tracking.log_decision(tracking.check(config.mlflow_uri), config.mlflow_experiment, result.flow_run_id, decision)
        logger.info("decision added to MLflow run %s at %s", tracked.run_id, tracked.uri)
    return outcome
