"""``retrain``, ``models`` and ``deploy``: retraining that runs itself, and the registry it keeps."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli.common import (
    CLUSTER_OPTIONS,
    MLFLOW_OPTIONS,
    STORAGE_OPTIONS,
    cli,
    comma_list,
    err,
    feature_sets,
    out,
    table,
    with_options,
)
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pydantic import ValidationError


def _as_of(ctx: click.Context, param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a date, YYYY-MM-DD", param_hint="--as-of") from None


#: What a retraining run is told (retrain-trip-duration's parameters); the cluster options come on top.
RETRAIN_OPTIONS = [
    click.option("--source", default=None, help="Folder, http(s):// prefix or fsspec URL of the month files [default: the TLC prefix]."),
    click.option("--registry", required=True, help="Model registry folder or URL, e.g. s3://bucket/registry (made on first use)."),
    STORAGE_OPTIONS,
    click.option("--window", type=click.IntRange(min=1), default=None, help="Training months before the validation month [default: 2]."),
    click.option("--taxi", type=click.Choice(["yellow", "green"]), default=None, help="[default: yellow]"),
    click.option("--alphas", callback=comma_list("--alphas", float), default=None, help="Ridge penalties [default: 0.001,0.3,1,3,10]."),
    click.option("--folds", type=click.IntRange(min=0), default=None, help="K-fold CV [default: 5]."),
    click.option("--model", type=click.Choice(["linear", "sgd", "hist_gradient_boosting"]), default=None, help="[default: linear]"),
    click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Row cap per fit for models other than linear."),
    click.option(
        "--candidates",
        callback=feature_sets,
        default=None,
        help="Feature sets (term lists) compared from one read [default: base;trip_distance:log48,hour_of_week].",
    ),
    click.option(
        "--boosted/--no-boosted",
        default=None,
        help="Also fit xgboost on the cluster and keep it if it beats the best linear candidate on the same held-out rows "
        "[default: boosted].",
    ),
    click.option("--chunk-rows", type=click.IntRange(min=1), default=None, help="Rows per task [default: 4,000,000]."),
    click.option("--notify", default=None, help="A saved Prefect notification block, TYPE/NAME (e.g. slack-webhook/ops)."),
    click.option("--notify-url", default=None, help="A Slack-compatible webhook or Apprise URL (a secret: never printed)."),
    click.option("--notify-on-completion", is_flag=True, default=False, help="Send a message when a run completes, too."),
    *MLFLOW_OPTIONS,
]

_FLOW_PARAMETERS = (
    *("source", "registry", "window", "taxi", "alphas", "folds", "model", "candidates", "boosted", "chunk_rows", "max_rows", "notify"),
    *("mlflow", "mlflow_uri", "mlflow_experiment"),
)


def _parameters(options: dict[str, Any]) -> dict[str, Any]:
    """The flow's parameters from the flags given (unset ones keep the flow's defaults); local paths made absolute.

    With ``--mlflow``, the extra must be installed and a tracking URI given (flag or MLFLOW_TRACKING_URI).
    """
    parameters = {k: options[k] for k in _FLOW_PARAMETERS if options.get(k) is not None}
    for key in ("source", "registry"):
        value = parameters.get(key)
        if isinstance(value, str) and "://" not in value:
            parameters[key] = str(Path(value).expanduser().resolve())
    if options.get("notify_on_completion"):
        parameters["notify_on_completion"] = True
    if parameters.get("mlflow"):  # a missing [mlflow] extra or tracking URI fails now, not when a run ends
        from pipeline.edge import tracking

        tracking.check(parameters.get("mlflow_uri"))
    return parameters


def _open_existing(registry: str) -> Any:
    """Refuse a registry location that is not a registry (or, remote, cannot be reached), before anything starts.

    The registry if there is one (None: the first run creates it)."""
    from pipeline.edge import storage
    from pipeline.edge.registry import REGISTRY_FILE, Registry

    where = storage.locate(registry)
    if storage.exists(where / REGISTRY_FILE) if where.remote else Path(registry).exists():
        return Registry.open(registry)
    return None


def _preflight(parameters: dict[str, Any], as_of: date | None) -> None:
    """Bad input fails here, in a second, with the registry unchanged: a folder that is not a registry, a damaged
    champion or history (unless ``--repair``), no month to train on."""
    from pipeline.core.config import DEFAULT_SOURCE
    from pipeline.core.months import Month
    from pipeline.edge.sources import is_local, latest_month

    store = _open_existing(parameters["registry"])
    if store is not None:
        store.check_for_commit(bool(parameters.get("repair")))
    source = parameters.get("source", DEFAULT_SOURCE)
    if is_local(source) or as_of is not None:
        day = as_of or date.today()
        latest_month(source, parameters.get("taxi", "yellow"), Month(day.year, day.month))


@cli.command()
@click.option("--as-of", callback=_as_of, default=None, help="Train as of this date, YYYY-MM-DD [default: today].")
@click.option(
    "--repair",
    is_flag=True,
    default=False,
    help="If the champion is damaged (a file missing or replaced, champion.json unreadable), promote this run's model "
    "over it, and cut off a torn last line of history.jsonl. Without it, a damaged registry is refused.",
)
@with_options(RETRAIN_OPTIONS)
@with_options(CLUSTER_OPTIONS)
def retrain(as_of: date | None, repair: bool, notify_url: str | None, notify_on_completion: bool, **options: Any) -> None:
    """Retrain now: validate on the newest published month, train on the window before it, keep the better model."""
    from pipeline.orchestration.notify import target_from

    target_from(options.get("notify"), notify_url, notify_on_completion)  # a contradiction fails before anything starts
    parameters = _parameters({**options, "notify_on_completion": notify_on_completion})
    if repair:
        parameters["repair"] = True
    _preflight(parameters, as_of)
    from cluster import ClusterSpec, check_cluster
    from pipeline.core import render
    from pipeline.flows.retrain import NOTIFY_URL_ENV, retrain_flow
    from pipeline.runtime.interrupts import completed
    from pipeline.runtime.local_stack import run_services

    cluster = ClusterSpec(**{k: v for k, v in options.items() if k not in _FLOW_PARAMETERS})
    check_cluster(cluster)
    if notify_url:
        os.environ[NOTIFY_URL_ENV] = notify_url  # read by the run's state hooks in this process; never a parameter
    with run_services(cluster, err.print, "pipeline.flows.retrain") as where:
        result = retrain_flow(**parameters, as_of=as_of, cluster=where)
        completed()  # the version is registered: a Ctrl-C from here on no longer undoes the run
    out.print(table(render.decision_line(result.decision), ("field", "value"), render.decision_rows(result.decision)))
    out.print(table(render.title(result.run), ("metric", "value"), render.metric_rows(result.run)))
    if result.run.cv is not None:
        out.print(table(render.cv_title(result.run.cv), render.cv_header(result.run.cv), render.cv_rows(result.run.cv)))
    out.print(f"registered {result.version} in {result.registry}")


@cli.group()
def models() -> None:
    """List, show, promote and roll back the versions of a model registry."""


_REGISTRY = click.option("--registry", required=True, help="Model registry folder or URL.")


def _open(registry: str) -> Any:
    from pipeline.edge.registry import Registry

    return Registry.open(registry)


@models.command("list")
@_REGISTRY
@STORAGE_OPTIONS
@click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout.")
def list_versions(registry: str, as_json: bool) -> None:
    """Versions with their months, validation RMSE and creation time; the champion marked."""
    from pipeline.core import render

    store = _open(registry)
    survey = store.survey()  # what can be read, and one line per damaged part: shown, then exit 1
    champion = survey.champion
    whole = {v.name: v for v in survey.versions}
    rows: list[dict[str, Any]] = []
    for name in sorted({*whole, *survey.damaged}):
        v = whole.get(name)
        row: dict[str, Any] = {"version": name, "champion": name == champion}
        if v is not None:
            row.update(model=v.model, train_months=list(v.train_months), val_month=v.val_month, val_rmse=v.val_rmse, created=v.created)
        else:
            row.update(model=None, train_months=[], val_month=None, val_rmse=None, created=None)
        row["damaged"] = survey.damaged.get(name)
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        header = ("", "version", "model", "train months", "val month", "val RMSE", "created")
        cells = [
            (
                ("*" if r["champion"] else "") + ("!" if r["damaged"] else ""),
                r["version"],
                r["model"] or "DAMAGED",
                ", ".join(r["train_months"]),
                r["val_month"] or "",
                "" if r["val_rmse"] is None else f"{r['val_rmse']:.4f}",
                render.created_text(r["created"] or ""),
            )
            for r in rows
        ]
        shown = champion if champion not in survey.damaged else f"{champion} (damaged)"
        title = f"{store.root}: {len(rows)} versions, champion {shown or 'none'}"
        drawn = table(title, header, cells, whole=("version", "created"))
        if out.width >= out.measure(drawn, options=out.options.update_width(10_000)).minimum:
            out.print(drawn)
        else:  # narrower than the table can be without cutting its times: a line per version, wrapped by the terminal
            out.print(title, highlight=False, soft_wrap=True)
            for mark, version, model, months, val_month, rmse, created in cells:
                line = f"{mark or ' '} {version} {model}: trained on {months or '-'}, val {val_month or '-'} RMSE {rmse or '-'}"
                line += f", created {created}"
                out.print(line, highlight=False, markup=False, soft_wrap=True)
    if survey.problems:
        for problem in survey.problems:
            err.print(f"damaged: {problem}", highlight=False, markup=False, soft_wrap=True)
        raise PipelineError(f"{store.root}: {len(survey.problems)} damaged part(s), listed above")


@models.command("show")
@click.argument("version")
@_REGISTRY
@STORAGE_OPTIONS
def show(version: str, registry: str) -> None:
    """One version's figures and every decision about it."""
    from pipeline.core import render
    from pipeline.core.results import RunResult

    store = _open(registry)
    found = store.version(version)
    result = RunResult.from_dict(found.metrics)
    out.print(table(f"{found.name} ({found.path}): {render.title(result)}", ("metric", "value"), render.metric_rows(result)))
    if result.inputs:
        out.print(table("data it was trained and validated on", render.INPUTS_HEADER, render.input_rows(result)))
    for decision in (d for d in store.history() if d.version == found.name):
        out.print(render.decision_line(decision), highlight=False)


@models.command("promote")
@click.argument("version")
@_REGISTRY
@STORAGE_OPTIONS
def promote(version: str, registry: str) -> None:
    """Make VERSION the champion (a manual override, recorded in the history)."""
    from pipeline.core import render

    out.print(render.decision_line(_open(registry).promote(version, reason="manual promotion from the CLI")), highlight=False)


@models.command("rollback")
@_REGISTRY
@STORAGE_OPTIONS
def rollback(registry: str) -> None:
    """Give the champion back to the previous one (recorded in the history)."""
    from pipeline.core import render

    out.print(render.decision_line(_open(registry).rollback()), highlight=False)


@cli.command()
@click.option("--cron", default=None, help='When to retrain, a cron string, e.g. "0 6 3 * *" (06:00 on the 3rd of each month).')
@click.option(
    "--interval",
    type=click.IntRange(min=1),
    default=None,
    metavar="SECONDS",
    help="Or retrain every SECONDS, from when serving starts (exactly one of --cron and --interval).",
)
@click.option("--timezone", default="UTC", show_default=True, help="Time zone of the schedule.")
@click.option("--name", default="monthly", show_default=True, help="Deployment name: retrain-trip-duration/NAME.")
@with_options(RETRAIN_OPTIONS)
def deploy(
    cron: str | None, interval: int | None, timezone: str, name: str, notify_url: str | None, notify_on_completion: bool, **options: Any
) -> None:
    """Serve the deployment retrain-trip-duration/NAME on its schedule against PREFECT_API_URL, until stopped.

    One retrain runs at a time: a run due while another runs starts when it ends. Ctrl-C stops serving with
    exit code 130, SIGTERM (a service manager's stop) with 0; either way the run in progress is cancelled and
    the schedule is paused. A failed run's error line is printed here."""
    from pipeline.orchestration.notify import target_from

    target_from(options.get("notify"), notify_url, notify_on_completion)
    parameters = _parameters({**options, "notify_on_completion": notify_on_completion})
    schedule, when = _schedule(cron, interval, timezone)
    from pipeline.runtime.prefect_api import configured_api_url, work_pool_of

    if not configured_api_url():
        raise PipelineError("deploy needs a running Prefect server: `prefect server start`, then set PREFECT_API_URL")
    pool = work_pool_of(f"retrain-trip-duration/{name}")
    if pool:  # serving it would silently replace that deployment (and its schedule) by this one
        raise PipelineError(
            f"--name {name!r}: retrain-trip-duration/{name} is already deployed on work pool {pool!r} (prefect.yaml's?); "
            "choose another --name"
        )
    if parameters.get("registry"):
        _open_existing(parameters["registry"])
    if notify_url:
        from pipeline.orchestration.notify import save_url_block

        parameters["notify"] = save_url_block(notify_url, f"taxi-pipeline-{name}")
    from pipeline.flows.retrain import retrain_flow
    from pipeline.runtime.serving import serve

    deployment = f"retrain-trip-duration/{name}"
    err.print(
        f"serving {deployment} {when} ({timezone}) against {configured_api_url()}; Ctrl-C or SIGTERM stops it; "
        f"run it now with: prefect deployment run {deployment}",
        highlight=False,
        soft_wrap=True,
    )
    if serve(retrain_flow, name, [schedule], parameters):
        err.print(f"stopped by SIGTERM: {deployment} is no longer served (its schedule is paused)", highlight=False, soft_wrap=True)


def _schedule(cron: str | None, interval: int | None, timezone: str) -> tuple[Any, str]:
    """The Prefect schedule of ``--cron`` or ``--interval`` (seconds), and how to say it; a bad one in one line."""
    from datetime import timedelta

    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from pydantic import ValidationError

    try:
        if cron is not None and interval is None:
            return CronSchedule(cron=cron, timezone=timezone), f"on {cron}"
        if interval is not None and cron is None:
            return IntervalSchedule(interval=timedelta(seconds=interval), timezone=timezone), f"every {interval} s"
    except ValidationError as exc:  # its last line is a link to pydantic's docs: say what is wrong instead
        given = f"--cron {cron!r}" if interval is None else f"--interval {interval}"
        raise PipelineError(f"{given} / --timezone {timezone!r}: {_schedule_error(exc)}") from None
    raise PipelineError("deploy needs exactly one schedule: --cron STRING or --interval SECONDS")


def _schedule_error(exc: ValidationError) -> str:
    """What a CronSchedule refused, in words: each error's message without pydantic's "Value error, " prefix."""
    return "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
