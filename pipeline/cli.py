"""``taxi-pipeline``: parse flags, call the Python API, print a table. Nothing else."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from pipeline.errors import PipelineError

_err = Console(stderr=True)
_out = Console()


def _table(title: str, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> Table:
    """A rich table of rows already spelt by :mod:`pipeline.core.render`."""
    table = Table(title=title)
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 and header[0] == "metric" else "right")
    for row in rows:
        table.add_row(*row)
    return table


@click.group()
@click.version_option(package_name="taxi-pipeline")
def cli() -> None:
    """Train NYC taxi trip-duration models with Prefect on Dask."""


@cli.command()
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for the month files.")
@click.option("--months", required=True, help="e.g. 2023-01:2023-03 or 2023-01,2023-03")
@click.option("--rows", type=click.IntRange(min=1), required=True, help="Rows per month.")
@click.option("--taxi", type=click.Choice(["yellow", "green"]), default="yellow", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--row-group-size", type=click.IntRange(min=1), default=500_000, show_default=True)
def synth(output: Path, months: str, rows: int, taxi: str, seed: int, row_group_size: int) -> None:
    """Write generated TLC-shaped month files (deterministic by seed)."""
    from pipeline.core.months import parse_months
    from pipeline.edge.synth import write_months

    try:
        chosen = parse_months(months)
    except PipelineError as exc:
        raise PipelineError(f"--months {months!r}: {exc}") from None
    for path in write_months(output, chosen, rows, seed=seed, taxi=taxi, row_group_size=row_group_size):
        _out.print(f"wrote {path}")


def _list(flag: str, convert: Any) -> Any:
    """A click callback parsing ``a,b,c`` into a list, naming ``flag`` when an item is bad."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list[Any] | None:
        if value is None:
            return None
        try:
            return [convert(item.strip()) for item in value.split(",") if item.strip()]
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of {convert.__name__}s", param_hint=flag) from None

    return parse


#: Options that configure the training run (TrainConfig fields); the rest choose the cluster.
_TRAIN_OPTIONS = [
    click.option(
        "--source", default=None, help="Folder, http(s):// prefix or fsspec URL of the month files [default: the public TLC prefix]."
    ),
    click.option("--taxi", type=click.Choice(["yellow", "green"]), default=None, help="[default: yellow]"),
    click.option(
        "--alphas",
        callback=_list("--alphas", float),
        default=None,
        help="Ridge penalties, e.g. 0.01,0.1,1,10; CV picks the best [default: 0.001].",
    ),
    click.option("--folds", type=click.IntRange(min=0), default=None, help="K-fold CV over training rows; 0 turns CV off [default: 5]."),
    click.option(
        "--cv",
        type=click.Choice(["kfold", "time"]),
        default=None,
        help="time: train on earlier months, validate on the next [default: kfold].",
    ),
    click.option("--seed", type=click.IntRange(min=0), default=None, help="Drives fold assignment and estimators [default: 0]."),
    click.option(
        "--model",
        type=click.Choice(["linear", "hist_gradient_boosting", "sgd"]),
        default=None,
        help="linear: exact, from statistics [default]; the others fit on rows, fold by fold.",
    ),
    click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Row cap per fit for models other than linear."),
    click.option(
        "--numeric", callback=_list("--numeric", str), default=None, help="Numeric columns to add as features, e.g. trip_distance."
    ),
    click.option(
        "--chunk-rows", type=click.IntRange(min=1), default=None, help="Rows per task, rounded to row groups [default: 4,000,000]."
    ),
    click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where remote months are cached."),
    click.option("--cache/--no-cache", default=None, help="Reuse chunk statistics of unchanged month files [default: cache]."),
]
_CLUSTER_OPTIONS = [
    click.option(
        "--n-workers",
        type=click.IntRange(min=1),
        default=None,
        help="Workers to start: of the LocalCluster [default: one per core], or of --cluster-class.",
    ),
    click.option(
        "--scheduler",
        "address",
        default=None,
        help="tcp:// or tls:// address of a running Dask scheduler (else DASK_SCHEDULER_ADDRESS, else a LocalCluster).",
    ),
    click.option(
        "--cluster-class", default=None, help="Import path of a Dask cluster to start for the run, e.g. dask_jobqueue.SLURMCluster."
    ),
    click.option("--cluster-kwargs", default=None, help="Its keyword arguments: a JSON object, or @FILE (JSON or YAML)."),
    click.option(
        "--adapt-min",
        type=click.IntRange(min=0),
        default=None,
        help="Let the started cluster scale between --adapt-min and --adapt-max workers.",
    ),
    click.option("--adapt-max", type=click.IntRange(min=1), default=None),
    click.option("--tls-ca-file", default=None, help="TLS: CA certificate (PEM) [default: Dask config distributed.comm.tls.ca-file]."),
    click.option("--tls-cert", default=None, help="TLS: our certificate (PEM) [default: distributed.comm.tls.client.cert]."),
    click.option("--tls-key", default=None, help="TLS: our private key (PEM) [default: distributed.comm.tls.client.key]."),
]


def _with(options: list[Any]) -> Any:
    def decorate(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def _flag_names() -> dict[str, str]:
    """Each TrainConfig field's flag: ``val_month`` -> ``--val-month``."""
    from pipeline.core.config import TrainConfig

    return {name: "--" + name.replace("_", "-") for name in TrainConfig.model_fields}


def _run_train(train_months: str, val_month: str, output: Path, **options: Any) -> None:
    """Build the config (flags left unset take TrainConfig's defaults), check the input, run, print."""
    from pipeline.core.config import ConfigError, TrainConfig
    from pipeline.edge.reader import locate_local

    fields = {k: v for k, v in options.items() if k in TrainConfig.model_fields and v is not None}
    try:
        config = TrainConfig.build(train_months=train_months, val_month=val_month, output=output, **fields)
    except ConfigError as exc:
        raise PipelineError(exc.render(_flag_names())) from None
    plans = locate_local(config)  # footers read once, before Prefect and Dask load
    from cluster import ClusterSpec
    from pipeline.core import render
    from pipeline.run import train as run_train

    cluster = ClusterSpec(**{k: v for k, v in options.items() if k not in TrainConfig.model_fields})
    result = run_train(config, cluster, plans=plans, announce=_err.print)
    _out.print(_table(render.title(result), ("metric", "value"), render.metric_rows(result)))
    if result.cv is not None:
        _out.print(_table(render.cv_title(result.cv), render.CV_HEADER, render.cv_rows(result.cv)))
    _out.print(f"model and metrics in {output}")


@cli.command()
@click.option("--train-months", required=True, help="e.g. 2023-01:2023-02")
@click.option("--val-month", required=True, help="e.g. 2023-03")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for model and metrics.")
@_with(_TRAIN_OPTIONS)
@_with(_CLUSTER_OPTIONS)
def train(**kwargs: Any) -> None:
    """Train on months, validate on another, write the model and metrics.json."""
    _run_train(**kwargs)


@cli.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("data/synth"), show_default=True)
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--rows", type=click.IntRange(min=1), default=3_000_000, show_default=True, help="Rows per generated month.")
@_with(_CLUSTER_OPTIONS)
def demo(data: Path, output: Path, rows: int, **cluster: Any) -> None:
    """Generate three months (once), train on two with 5-fold CV, validate on the third."""
    from pipeline.core.months import parse_months
    from pipeline.edge.sources import month_filename
    from pipeline.edge.synth import write_months

    months = parse_months("2023-01:2023-03")
    missing = [m for m in months if not (data / month_filename("yellow", m)).exists()]
    if missing:
        _err.print(f"generating {len(missing)} month(s) of {rows:,} rows in {data}")
        write_months(data, missing, rows, seed=0)
    _run_train("2023-01:2023-02", "2023-03", output, source=str(data), alphas=[1e-3, 0.1, 1.0, 10.0], **cluster)


class _NoTracebackForBadInput(logging.Filter):
    """Prefect logs a failed run with its traceback; for bad input the message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info = None
        return True


def main() -> None:
    """Entry point: one line on stderr and exit code 2 for bad input or flags."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_NoTracebackForBadInput())
    try:
        cli.main(standalone_mode=False)
    except (PipelineError, click.UsageError) as exc:
        message = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
        _err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        _err.print("aborted")
        sys.exit(130)


if __name__ == "__main__":
    main()
