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

from cluster import ClusterSpec
from pipeline.core import render
from pipeline.core.config import DEFAULT_EXPERIMENT, DEFAULT_SOURCE, ModelName, Taxi, TrainConfig, candidate_terms
from pipeline.core.decisions import Decision
from pipeline.core.features import FeatureSpec
from pipeline.core.model import Model
from pipeline.core.months import Month
from pipeline.core.results import RunResult
from pipeline.edge import reader, row_fits, storage, tracking
from pipeline.edge.model_files import META_FILE, load_any
from pipeline.edge.registry import Registry, Version
from pipeline.edge.sources import latest_month
from pipeline.errors import PipelineError
from pipeline.flows.train import train_on_dask
from pipeline.orchestration.notify import send, target_from
from pipeline.runtime.api_watch import writing
from pipeline.runtime.cluster_runner import dask_runner
from pipeline.runtime.interrupts import interrupt_wins
from pipeline.runtime.prefect_api import ui_url

log = logging.getLogger(__name__)

#: Where ``--notify-url`` travels from the CLI to the state hooks of a run in the same process: an environment
#: variable, never a flow parameter (parameters are stored in the Prefect database and shown in the UI).
NOTIFY_URL_ENV = "TAXI_PIPELINE_NOTIFY_URL"
#: Compared on every retraining run unless told otherwise: the seed's features alone, and with the trip distance in
#: 48 log-spaced bins and the hour of the week (real months: 16-20% lower RMSE than the seed's; see the docs' features page).
DEFAULT_CANDIDATES: tuple[tuple[str, ...], ...] = ((), ("trip_distance:log48", "hour_of_week"))


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


def _training_config(champion: Version | None, staged: Any, months: tuple[list[Month], Month], options: dict[str, Any]) -> TrainConfig:
    """The challenger's config: candidates compared by CV, plus a linear champion's terms read so it can be scored exactly
    (another champion is scored from its rows)."""
    train, val = months
    candidates = tuple(tuple(c) for c in options.pop("candidates"))
    champion_terms: tuple[str, ...] = ()
    if champion is not None and storage.exists(champion.path / META_FILE):
        champion_model = load_any(champion.path)
        if isinstance(champion_model, Model):  # a linear champion is scored from the same statistics: read its terms
            champion_terms = champion_model.spec.terms
    if options["model"] != "linear":
        options["alphas"] = tuple(options["alphas"])[:1]  # row-fitted models have no alpha grid
    if options["model"] != "linear" or options["folds"] < 2:
        options["boosted_challenger"] = False  # the challenger is compared in a linear K-fold CV
    if options["model"] != "linear" or options["folds"] < 2:
        if len(candidates) > 1 and candidates != DEFAULT_CANDIDATES:
            raise PipelineError("--candidates: comparing feature sets needs --model linear and 2 or more --folds")
        candidates = candidates if len(candidates) == 1 else ((),)  # without linear CV, the default is the seed's features
        terms = candidate_terms(candidates[0])
        if options["model"] != "linear":  # row-fitted models read the zones and numeric columns
            return TrainConfig.build(train_months=train, val_month=val, output=staged, numeric=FeatureSpec.of(terms).numeric, **options)
        return TrainConfig.build(train_months=train, val_month=val, output=staged, features=terms, **options)
    return TrainConfig.build(train_months=train, val_month=val, output=staged, read_also=champion_terms, candidates=candidates, **options)


def _rescore(current: Version, val: reader.MonthPlan) -> float | None:
    """A champion promoted by another run while this one trained: scored on this run's validation month from its rows."""
    if not storage.exists(current.path / META_FILE):
        return None
    return row_fits.model_rmse(load_any(current.path), val)


def _notify(flow: Any, flow_run: Any, state: Any) -> None:
    """State hook: a message on failure, and on completion when asked. Never fails the run."""
    parameters = flow_run.parameters or {}
    try:
        target = target_from(parameters.get("notify"), os.environ.get(NOTIFY_URL_ENV), bool(parameters.get("notify_on_completion")))
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
        body = "\n".join([error, f"as_of {parameters.get('as_of') or 'scheduled'}, source {parameters.get('source')}", link])
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
def retrain_flow(
    source: str = DEFAULT_SOURCE,
    registry: str = "runs/registry",
    as_of: date | None = None,
    window: int = 2,
    taxi: Taxi = "yellow",
    alphas: tuple[float, ...] = (1e-3, 0.3, 1.0, 3.0, 10.0),
    folds: int = 5,
    model: ModelName = "linear",
    candidates: tuple[tuple[str, ...], ...] = DEFAULT_CANDIDATES,
    boosted: bool = True,
    chunk_rows: int = 4_000_000,
    seed: int = 0,
    max_rows: int | None = None,
    cluster: ClusterSpec | None = None,
    notify: str | None = None,
    notify_on_completion: bool = False,
    mlflow: bool = False,
    mlflow_uri: str | None = None,
    mlflow_experiment: str = DEFAULT_EXPERIMENT,
    repair: bool = False,
) -> RetrainResult:
    """Retrain on the newest published month and its ``window`` predecessors; promote the challenger if better.

    ``notify`` names a saved notification block (``TYPE/NAME``); the CLI's
    ``--notify-url`` reaches the hooks through the environment instead. With
    ``mlflow``, the training run is an MLflow run and the decision is added to it.
    A damaged champion or history is refused before training, unless ``repair``: then
    the challenger replaces the damaged champion and a torn history line is cut off.
    """
    logger = get_run_logger()
    if window < 1:
        raise PipelineError(f"--window {window}: train on at least one month")
    day = _as_of(as_of)
    store = Registry.open(registry, create=True)
    store.check_for_commit(repair)
    val = latest_month(source, taxi, Month(day.year, day.month))
    train = [val.shift(-n) for n in range(window, 0, -1)]
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
    options = {
        "source": source,
        "taxi": taxi,
        "alphas": alphas,
        "folds": folds,
        "model": model,
        "candidates": candidates,
        "boosted_challenger": boosted,
        "chunk_rows": chunk_rows,
        "seed": seed,
        "max_rows": max_rows,
        "mlflow": mlflow,
        "mlflow_uri": mlflow_uri,
        "mlflow_experiment": mlflow_experiment,
    }
    with interrupt_wins(), store.staging() as staged:  # after Ctrl-C, whatever the interrupt broke is the interrupt
        config = _training_config(champion, staged, (train, val), options)
        plans = reader.locate_local(config)
        with dask_runner(cluster) as runner:
            result = train_on_dask.with_options(task_runner=runner.task_runner)(
                config, plans, runner.slots, str(champion.path) if champion else None
            )

        def score_champion(current: Version) -> float | None:
            if champion is not None and current.name == champion.name:
                return result.champion_val_rmse
            val_plan = plans[-1] if plans else reader.locate(source, taxi, val, config.feature_spec().columns(), None)
            return _rescore(current, val_plan)

        with writing():  # a lost Prefect API ends the run after this, never during it
            version, decision = store.commit(staged, score_champion, repair=repair)
    outcome = RetrainResult(str(day), str(store.root), version.name, decision, result)
    create_markdown_artifact(
        key="retrain-decision", markdown=render.retrain_markdown(decision, result), description=render.decision_line(decision)
    )
    logger.info("%s", render.decision_line(decision))
    if config.mlflow:
        tracked = tracking.log_decision(tracking.check(config.mlflow_uri), config.mlflow_experiment, result.flow_run_id, decision)
        logger.info("decision added to MLflow run %s at %s", tracked.run_id, tracked.uri)
    return outcome
