"""MLflow tracking (the optional ``[mlflow]`` extra): one MLflow run per training run, read back with ``MlflowClient``.

MLflow is imported only when tracking is asked for (it takes a second or two),
and always through an ``MlflowClient`` bound to an explicit tracking URI: no
``mlflow.set_tracking_uri`` or active run, so nothing leaks between runs in one
process. A URI's ``user:password`` is never printed (:func:`redact`).

Metric names: ``cv_rmse_alpha_0.1`` holds one point per fold (step = fold) of
that alpha; with candidate feature sets, ``cv_rmse_features_trip_distance_alpha_0.1``
(``base`` for the zones alone, columns joined by ``.``); models without an alpha
log ``cv_rmse``. ``cv_mean_rmse_*`` is the mean over folds that CV chose by.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.core.config import TrainConfig
from pipeline.core.cv import Features
from pipeline.core.decisions import Decision
from pipeline.core.render import features_text, title
from pipeline.core.results import RunResult
from pipeline.errors import PipelineError

INSTALL_HINT = "--mlflow needs MLflow: pip install 'taxi-pipeline[mlflow]'"
URI_ENV = "MLFLOW_TRACKING_URI"
#: Tag that links an MLflow run to the Prefect flow run that trained it (and finds it again for the decision).
FLOW_RUN_TAG = "prefect.flow_run_id"
FLOW_RUN_URL_TAG = "prefect.flow_run_url"
#: Config fields that are not parameters of the model: where files go and how they are fetched, and tracking itself.
_NOT_PARAMS = frozenset(
    {
        "output",
        "cache_dir",
        "http_timeout",
        "stats_cache",
        "stats_cache_max_bytes",
        "mlflow",
        "mlflow_uri",
        "mlflow_experiment",
        "read_also",
    }
)


@dataclass(frozen=True)
class Tracked:
    """An MLflow run: its id, experiment and the tracking URI without credentials (safe to print)."""

    run_id: str
    experiment_id: str
    uri: str


def redact(uri: str) -> str:
    """``uri`` without ``user:password@``, for anything printed or logged."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def check(uri: str | None) -> str:
    """Fail fast, before any server starts: the extra is importable and there is a tracking URI. Returns the URI."""
    _client_class()
    resolved = uri or os.environ.get(URI_ENV)
    if not resolved:
        raise PipelineError(f"--mlflow: no tracking URI: give --mlflow-uri or set {URI_ENV} (e.g. sqlite:///mlflow.db)")
    return resolved


def _client_class() -> Any:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise PipelineError(INSTALL_HINT) from None
    return MlflowClient


def _client(uri: str) -> Any:
    return _client_class()(tracking_uri=uri)


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return str(found.experiment_id if found is not None else client.create_experiment(name))


def _failure(uri: str, exc: BaseException, run_id: str | None = None) -> PipelineError:
    """One line naming the store (and run), with the URI's password kept out even if MLflow's message repeats it."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0].replace(uri, redact(uri))
    password = urlsplit(uri).password
    if password:
        line = line.replace(password, "***")
    return PipelineError(f"MLflow at {redact(uri)}: " + (f"run {run_id}: " if run_id else "") + line)


def _features_key(features: Features | None) -> str:
    """A feature set in a metric name: ``zones.trip_distance:log48.hour_of_week``; characters MLflow refuses become ``_``."""
    if features is None:
        return ""
    text = features_text(features).replace(" + ", ".").replace("zones", "base", 1)
    return "_features_" + re.sub(r"[^A-Za-z0-9_\-. :/]", "_", text)


def metric_key(prefix: str, features: Features | None, alpha: float | None) -> str:
    """A valid MLflow metric name for a CV figure of one candidate and alpha: ``cv_rmse_alpha_0.1``."""
    return prefix + _features_key(features) + ("" if alpha is None else f"_alpha_{alpha:g}")


def params(config: TrainConfig, result: RunResult) -> dict[str, str]:
    """The run's parameters as MLflow strings: the config (lists comma-joined, unset ones left out), and what CV chose."""
    out: dict[str, str] = {}
    for name, value in config.model_dump(mode="json").items():
        if name in _NOT_PARAMS or value is None or value == []:  # an empty list is unset too (no numeric columns, no candidates)
            continue
        if name == "candidates":
            out[name] = ";".join("+".join(c) or "base" for c in value)
        elif isinstance(value, list):
            out[name] = ",".join(map(str, value))
        else:
            out[name] = str(value)
    out["source"] = redact(out["source"])
    out["chosen_alpha"] = str(result.alpha)
    out["chosen_features"] = features_text(result.terms)
    return out


def metrics(result: RunResult) -> list[tuple[str, float, int]]:
    """``(key, value, step)``: the run's figures at step 0, and every fold × alpha CV RMSE with step = fold."""
    figures = {
        "train_rmse": result.train_rmse,
        "val_rmse": result.val_rmse,
        "train_rows": result.train_rows,
        "val_rows": result.val_rows,
        "seconds": result.seconds,
        "rows_per_second": result.rows_per_second,
    }
    if result.champion_val_rmse is not None:
        figures["champion_val_rmse"] = result.champion_val_rmse
    out = [(key, float(value), 0) for key, value in figures.items()]
    if result.cv is not None:
        out += [(metric_key("cv_mean_rmse", s.features, s.alpha), s.mean_rmse, 0) for s in result.cv.by_alpha]
        out += [(metric_key("cv_rmse", s.features, s.alpha), s.rmse, s.fold) for s in result.cv.scores]
    return out


def log_training(
    uri: str, experiment: str, config: TrainConfig, result: RunResult, tags: dict[str, str], files: dict[str, bytes]
) -> Tracked:
    """One MLflow run for a finished training run: parameters, metrics, ``tags`` and the run's files as artifacts.

    ``files`` are the bytes the run wrote (name: content), so the output may be local or in object storage.

    A failure on the way ends the MLflow run as FAILED and is one PipelineError line naming the (redacted) URI.
    """
    from mlflow.entities import Metric, Param

    client = _client(uri)
    try:
        experiment_id = _experiment_id(client, experiment)
        run = client.create_run(experiment_id, run_name=title(result), tags=tags)
    except Exception as exc:
        raise _failure(uri, exc) from None
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(run_id, params=[Param(k, v) for k, v in params(config, result).items()])
        figures = [Metric(key, value, now, step) for key, value, step in metrics(result)]
        for start in range(0, len(figures), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=figures[start : start + 1000])
        if result.inputs:
            client.log_inputs(run_id, datasets=dataset_inputs(result))
        with tempfile.TemporaryDirectory() as folder:
            for name, data in files.items():
                (Path(folder) / name).write_bytes(data)
            client.log_artifacts(run_id, folder)
    except Exception as exc:
        client.set_terminated(run_id, status="FAILED")
        raise _failure(uri, exc, run_id) from None
    client.set_terminated(run_id, status="FINISHED")
    return Tracked(run_id, experiment_id, redact(uri))


def dataset_inputs(result: RunResult) -> list[Any]:
    """The run's month files as MLflow dataset inputs: name, a digest of their identity, the location, and the role as context."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    out = []
    for item in result.inputs:
        digest = hashlib.sha256(f"{item.location}|{item.identity}|{item.size}".encode()).hexdigest()[:16]
        source_type = "http" if item.location.startswith(("http://", "https://")) else ("s3" if "://" in item.location else "local")
        source = json.dumps({"uri": item.location, "size": item.size, "identity": item.identity, "stats_keys": list(item.stats_keys)})
        dataset = Dataset(name=f"{result.taxi} {item.month}", digest=digest, source_type=source_type, source=source)
        out.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", item.role)]))
    return out


def log_decision(uri: str, experiment: str, flow_run_id: str, decision: Decision) -> Tracked:
    """Add a retraining decision to the MLflow run of the training flow run ``flow_run_id``, as ``decision.*`` tags."""
    from mlflow.entities import RunTag

    client = _client(uri)
    try:
        experiment_id = _experiment_id(client, experiment)
        found = client.search_runs([experiment_id], filter_string=f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'", max_results=1)
        if not found:
            raise PipelineError(f"no run tagged {FLOW_RUN_TAG} = {flow_run_id} in experiment {experiment!r}")
        run_id = found[0].info.run_id
        client.log_batch(run_id, tags=[RunTag(f"decision.{k}", str(v)) for k, v in decision.to_dict().items() if v is not None])
    except Exception as exc:
        raise _failure(uri, exc) from None
    return Tracked(run_id, experiment_id, redact(uri))
