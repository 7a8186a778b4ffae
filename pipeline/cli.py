"""``taxi-pipeline``: parse flags, call the Python API, print a table. Nothing else."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from pipeline.errors import PipelineError

_err = Console(stderr=True)
_out = Console()

_TABLE_KEYS = ("train_rows", "val_rows", "train_rmse", "val_rmse", "seconds", "rows_per_second")


def _metrics_table(metrics: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in _TABLE_KEYS:
        value = metrics[key]
        table.add_row(key, f"{value:,.4f}" if isinstance(value, float) else f"{value:,}")
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

    for path in write_months(output, parse_months(months), rows, seed=seed, taxi=taxi, row_group_size=row_group_size):
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
    click.option("--source", default=None, help="Folder, http(s):// prefix or fsspec URL of the month files [default: the public TLC prefix]."),
    click.option("--taxi", type=click.Choice(["yellow", "green"]), default=None, help="[default: yellow]"),
    click.option("--alphas", callback=_list("--alphas", float), default=None, help="Ridge penalties, e.g. 0.01,0.1,1,10; CV picks the best [default: 0.001]."),
    click.option("--folds", type=click.IntRange(min=0), default=None, help="K-fold CV over training rows; 0 turns CV off [default: 5]."),
    click.option("--cv", type=click.Choice(["kfold", "time"]), default=None, help="time: train on earlier months, validate on the next [default: kfold]."),
    click.option("--seed", type=click.IntRange(min=0), default=None, help="Drives fold assignment and estimators [default: 0]."),
    click.option("--model", default=None, help="linear (exact, default), hist_gradient_boosting or sgd."),
    click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Row cap per fit for models other than linear."),
    click.option("--numeric", callback=_list("--numeric", str), default=None, help="Numeric columns to add as features, e.g. trip_distance."),
    click.option("--chunk-rows", type=click.IntRange(min=1), default=None, help="Rows per task, rounded to row groups [default: 4,000,000]."),
    click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where remote months are cached."),
    click.option("--cache/--no-cache", default=None, help="Reuse chunk statistics of unchanged month files [default: cache]."),
]
_CLUSTER_OPTIONS = [
    click.option("--n-workers", type=click.IntRange(min=1), default=None, help="Workers to start: of the LocalCluster [default: one per core], or of --cluster-class."),
    click.option("--scheduler", "address", default=None, help="tcp:// or tls:// address of a running Dask scheduler (else DASK_SCHEDULER_ADDRESS, else a LocalCluster)."),
    click.option("--cluster-class", default=None, help="Import path of a Dask cluster to start for the run, e.g. dask_jobqueue.SLURMCluster."),
    click.option("--cluster-kwargs", default=None, help="Its keyword arguments: a JSON object, or @FILE (JSON or YAML)."),
    click.option("--adapt-min", type=click.IntRange(min=0), default=None, help="Let the started cluster scale between --adapt-min and --adapt-max workers."),
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


def _run_train(train_months: str, val_month: str, output: Path, **options: Any) -> None:
    """Build the config (flags left unset take TrainConfig's defaults), check the input, run, print."""
    from pipeline.core.config import TrainConfig
    from pipeline.edge.reader import preflight

    fields = {k: v for k, v in options.items() if k in TrainConfig.model_fields and v is not None}
    config = TrainConfig.from_flags(train_months, val_month, output=output, **fields)
    preflight(config)
    from cluster import ClusterSpec  # Prefect and Dask load only once the input looks sound
    from pipeline.run import train as run_train

    cluster = ClusterSpec(**{k: v for k, v in options.items() if k not in TrainConfig.model_fields})
    metrics = run_train(config, cluster, announce=_err.print)
    _out.print(_metrics_table(metrics, f"trained on {', '.join(metrics['train_months'])}, validated on {metrics['val_month']}"))
    if "cv" in metrics:
        _out.print(_cv_table(metrics["cv"]))
    _out.print(f"model and metrics in {output}")


def _cv_table(report: dict[str, Any]) -> Table:
    from pipeline.core.cv import alpha_text

    table = Table(title=f"{report['kind']} CV over {report['folds']} folds; chosen alpha {alpha_text(report['chosen_alpha'])}")
    for column in ("alpha", "mean RMSE", "std", "folds"):
        table.add_column(column, justify="right")
    for row in report["by_alpha"]:
        table.add_row(alpha_text(row["alpha"]), f"{row['mean_rmse']:.4f}", f"{row['std_rmse']:.4f}", str(row["folds"]))
    return table


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
