"""Pre-flight: every check of a run's input, in one place, before any server or worker starts.

:mod:`pipeline.run` calls one of these for each run (the CLI goes through it), so bad input fails in a
second, in one line, with nothing started or written. The flows do not check again: a deployment's run
calls its flow directly, and there the first bad input (a registry, a month) fails the run with its own
one-line error, which the flow's failure hook logs (:func:`pipeline.flows.retrain.error_line`).
Only Dask's door and the edge are imported here: Prefect loads once the run starts.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pipeline.cluster import ClusterSpec, check_cluster
from pipeline.core.config import RetrainConfig, ScoreConfig, TrainConfig
from pipeline.core.months import Month
from pipeline.edge import predictions, storage, tracking
from pipeline.edge.model_files import load_any
from pipeline.edge.reader import MonthPlan, locate, locate_local
from pipeline.edge.registry import REGISTRY_FILE, Registry, model_folder
from pipeline.edge.sources import check_remote_months, is_local, latest_month
from pipeline.orchestration.notify import target_from


def train(config: TrainConfig, cluster: ClusterSpec) -> list[MonthPlan] | None:
    """Months, output, MLflow and cluster of a training run; the months' plans when they are local (footers read once)."""
    plans = locate_local(config)
    if plans is None:  # remote: a missing bucket or month fails now, in one line, not after the API and cluster start
        train_months, val = config.months()
        check_remote_months(config.source, config.taxi, [*train_months, val])
    storage.probe(config.output)  # an unreachable or refusing object store fails here, not after training
    _tracking(config)
    check_cluster(cluster)  # bad cluster flags, address, TLS or versions fail here, before any server starts
    return plans


def deployment(config: RetrainConfig, notify_url: str | None = None) -> Registry | None:
    """What a retraining deployment is refused for at once: contradicting notifications, a missing MLflow, a registry
    location that is not a registry (or, remote, cannot be reached). The registry, if there is one (the first run makes it)."""
    target_from(config.notify, notify_url, config.notify_on_completion)
    _tracking(config)
    where = storage.locate(config.registry)
    exists = storage.exists(where / REGISTRY_FILE) if where.remote else Path(config.registry).exists()
    return Registry.open(config.registry) if exists else None


def retrain(config: RetrainConfig, cluster: ClusterSpec, notify_url: str | None = None) -> None:
    """A retraining run's: the deployment's checks, a damaged champion or history (unless ``repair``), no month to train
    on, the cluster. The registry stays as it was."""
    store = deployment(config, notify_url)
    if store is not None:
        store.check_for_commit(config.repair)
    if is_local(config.source) or config.as_of is not None:  # a remote source without a date is probed by the run
        day = config.as_of or date.today()
        latest_month(config.source, config.taxi, Month(day.year, day.month), timeout=config.http_timeout)
    check_cluster(cluster)


def score(config: ScoreConfig, cluster: ClusterSpec) -> str:
    """Output, model, months and cluster of a scoring run; the model folder it scores with (a registry's resolved)."""
    predictions.check_output(config.output)
    folder = model_folder(config)
    columns = load_any(folder).spec.columns()  # a folder that is not a model fails here
    if is_local(config.source):
        for month in config.months:
            locate(config.source, config.taxi, month, columns, config.cache_dir, config.http_timeout)
    else:
        check_remote_months(config.source, config.taxi, config.months)
    check_cluster(cluster)
    return folder


def _tracking(config: TrainConfig | RetrainConfig) -> None:
    if config.mlflow:
        tracking.check(config.mlflow_uri)  # a missing [mlflow] extra or tracking URI: one line, at once
