"""``retrain``, ``models`` and ``deploy``: retraining that runs itself, and the registry it keeps."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli.common import (
    CLUSTER_OPTIONS,
    absolute,
    cli,
    comma_list,
    err,
    feature_sets,
    field_option,
    out,
    parsed,
    storage_options,
    table,
    with_options,
)
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pydantic import ValidationError


def _retrain_options() -> list[Any]:
    """What a retraining run is told (RetrainConfig fields), and --notify-url; the cluster options come on top."""
    from pipeline.core.config import RetrainConfig

    def option(name: str, *decls: str, **kwargs: Any) -> Any:
        return field_option(RetrainConfig, name, *decls, **kwargs)

    return [
        option("source"),
        option("registry", required=True),
        option("as_of"),
        option("repair", "--repair", is_flag=True),
        option("window", type=int),
        option("taxi"),
        option("alphas", callback=comma_list("--alphas", float)),
        option("folds", type=int),
        option("model"),
        option("max_rows", type=int),
        option("candidates", callback=feature_sets),
        option("boosted", "--boosted/--no-boosted"),
        option("seed", type=int),
        option("chunk_rows", type=int),
        option("cache_dir"),
        option("http_timeout", type=float),
        option("cache", "--cache/--no-cache"),
        option("stats_cache"),
        option("stats_cache_max_bytes"),
        option("notify"),
        click.option("--notify-url", default=None, help="A Slack-compatible webhook or Apprise URL (a secret: never printed)."),
        option("notify_on_completion", "--notify-on-completion", is_flag=True),
        option("mlflow", "--mlflow", is_flag=True),
        option("mlflow_uri"),
        option("mlflow_experiment"),
    ]


def _retrain_config(options: dict[str, Any]) -> tuple[Any, Any]:
    """The RetrainConfig of the flags (local folders made absolute: a deployment's runs start elsewhere) and the cluster."""
    from pipeline.core.config import RetrainConfig

    for key in ("source", "registry"):
        if options.get(key) is not None:
            options[key] = absolute(options[key])
    return parsed(RetrainConfig, options)


@cli.command()
@with_options(_retrain_options())
@storage_options
@with_options(CLUSTER_OPTIONS)
def retrain(notify_url: str | None, **options: Any) -> None:
    """Retrain now: validate on the newest published month, train on the window before it, keep the better model."""
    config, cluster = _retrain_config(options)
    from pipeline.core import render
    from pipeline.run import retrain as run_retrain

    result = run_retrain(config, cluster, notify_url=notify_url, announce=err.print)
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
@storage_options
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
@storage_options
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
@storage_options
def promote(version: str, registry: str) -> None:
    """Make VERSION the champion (a manual override, recorded in the history)."""
    from pipeline.core import render

    out.print(render.decision_line(_open(registry).promote(version, reason="manual promotion from the CLI")), highlight=False)


@models.command("rollback")
@_REGISTRY
@storage_options
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
@with_options(_retrain_options())
@storage_options
@with_options(CLUSTER_OPTIONS)
def deploy(cron: str | None, interval: int | None, timezone: str, name: str, notify_url: str | None, **options: Any) -> None:
    """Serve the deployment retrain-trip-duration/NAME on its schedule against PREFECT_API_URL, until stopped.

    One retrain runs at a time: a run due while another runs starts when it ends. Ctrl-C stops serving with
    exit code 130, SIGTERM (a service manager's stop) with 0; either way the run in progress is cancelled and
    the schedule is paused. A failed run's error line is printed here. Each run starts its own LocalCluster
    unless the cluster flags say otherwise (--scheduler: a running one)."""
    config, cluster = _retrain_config(_cluster_files_absolute(options))
    from pipeline import preflight
    from pipeline.cluster import check_cluster

    preflight.deployment(config, notify_url)
    check_cluster(cluster)
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
    # The flags given, as the deployment's parameters: config fields left out take their defaults (and their
    # TAXI_PIPELINE_* variables) where each run starts, and so do cluster fields left at their defaults. The URL is
    # saved as a block; the config names it.
    given = config.model_dump(mode="json", exclude_unset=True)
    if notify_url:
        from pipeline.orchestration.notify import save_url_block

        given["notify"] = save_url_block(notify_url, f"taxi-pipeline-{name}")
    cluster_given = {f.name: getattr(cluster, f.name) for f in fields(cluster) if getattr(cluster, f.name) != f.default}
    parameters = {"config": given, **({"cluster": cluster_given} if cluster_given else {})}
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


def _cluster_files_absolute(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the cluster's TLS files and ``--cluster-kwargs @FILE`` made absolute: a deployment's runs start elsewhere."""
    for key in ("tls_ca_file", "tls_cert", "tls_key"):
        if options.get(key) is not None:
            options[key] = absolute(options[key])
    kwargs = options.get("cluster_kwargs")
    if isinstance(kwargs, str) and kwargs.startswith("@"):
        options["cluster_kwargs"] = "@" + absolute(kwargs[1:])
    return options


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
