"""The Python API: train, retrain and score with Prefect on Dask, from a script or a notebook.

Each takes its flow's config and an optional :class:`~cluster.ClusterSpec`, and does the same three
things: checks the input and the cluster flags before anything starts (:mod:`pipeline.preflight`),
takes the local stack of ``taxi-pipeline up`` when it is up and fits, else brings up the run's Prefect
API (unless ``PREFECT_API_URL`` names one) while the run's LocalCluster (if it gets one) starts in a
thread, and calls the flow, which connects to that cluster (or resolves one itself). The CLI parses
its flags into the config and calls these.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline import preflight
from pipeline.cluster import ClusterSpec
from pipeline.core.config import RetrainConfig, ScoreConfig, TrainConfig
from pipeline.core.results import RunResult
from pipeline.orchestration.notify import NOTIFY_URL_ENV

# The flows (Prefect, scikit-learn and XGBoost's wrappers: ~2.5 s of imports) load after the pre-flight checks, so that
# bad input fails in about a second.
if TYPE_CHECKING:
    from pipeline.flows.retrain import RetrainResult
    from pipeline.flows.score import ScoreResult

log = logging.getLogger(__name__)

Announce = Callable[[str], None]
_R = TypeVar("_R")


def train(config: TrainConfig, cluster: ClusterSpec | None = None, *, announce: Announce = log.info) -> RunResult:
    """Train and validate as :func:`pipeline.flows.train.train_flow`; return its result (model and metrics are written)."""
    spec = cluster or ClusterSpec()
    plans = preflight.train(config, spec)  # local footers are read once, here, and handed to the flow
    from pipeline.flows.train import train_flow

    return _run(spec, announce, "pipeline.flows.train", train_flow, config, plans=plans)


def retrain(
    config: RetrainConfig | None = None, cluster: ClusterSpec | None = None, *, notify_url: str | None = None, announce: Announce = log.info
) -> RetrainResult:
    """Retrain as :func:`pipeline.flows.retrain.retrain_flow`; return the decision (the version is registered).

    ``notify_url`` (a Slack-compatible webhook or Apprise URL) is a secret: it reaches the run's state hooks through
    this process's environment, for this run only, never as a flow parameter (Prefect stores and shows those).
    """
    settings = config or RetrainConfig()
    spec = cluster or ClusterSpec()
    preflight.retrain(settings, spec, notify_url)
    from pipeline.flows.retrain import retrain_flow

    with _notify_url(notify_url):
        return _run(spec, announce, "pipeline.flows.retrain", retrain_flow, settings)


def score(config: ScoreConfig, cluster: ClusterSpec | None = None, *, announce: Announce = log.info) -> ScoreResult:
    """Score as :func:`pipeline.flows.score.score_flow`; return each month's report (predictions and report are written).

    A registry's champion is resolved once, here: the run scores the model that was checked.
    """
    spec = cluster or ClusterSpec()
    folder = preflight.score(config, spec)
    resolved = config.model_copy(update={"model": folder, "registry": None, "version": None})
    from pipeline.flows.score import score_flow

    return _run(spec, announce, "pipeline.flows.score", score_flow, resolved)


def _run(spec: ClusterSpec, announce: Announce, module: str, flow: Callable[..., _R], config: Any, **extra: Any) -> _R:
    from pipeline.runtime.interrupts import completed
    from pipeline.runtime.local_stack import run_services

    with run_services(spec, announce, module) as where:
        result = flow(config, where, **extra)
        completed()  # the run's outputs are written: a Ctrl-C while the services close no longer undoes the run
    return result


@contextmanager
def _notify_url(url: str | None) -> Iterator[None]:
    """``url`` in ``$TAXI_PIPELINE_NOTIFY_URL`` while the run lasts, where the run's hooks (in this process) read it."""
    if not url:
        yield
        return
    before = os.environ.get(NOTIFY_URL_ENV)
    os.environ[NOTIFY_URL_ENV] = url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(NOTIFY_URL_ENV, None)
        else:
            os.environ[NOTIFY_URL_ENV] = before
