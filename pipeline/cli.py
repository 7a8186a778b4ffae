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
    from pipeline.months import parse_months
    from pipeline.synth import write_months

    for path in write_months(output, parse_months(months), rows, seed=seed, taxi=taxi, row_group_size=row_group_size):
        _out.print(f"wrote {path}")


def _train_options(function: Any) -> Any:
    options = [
        click.option("--source", default=None, help="Folder, http(s):// prefix or fsspec URL of the month files [default: the public TLC prefix]."),
        click.option("--taxi", type=click.Choice(["yellow", "green"]), default="yellow", show_default=True),
        click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True, help="Ridge penalty."),
        click.option("--numeric", default="", help="Comma-separated numeric columns to add as features, e.g. trip_distance."),
        click.option("--chunk-rows", type=click.IntRange(min=1), default=2_000_000, show_default=True, help="Rows per task, rounded to row groups."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where remote months are cached."),
        click.option("--n-workers", type=click.IntRange(min=1), default=None, help="Workers of the LocalCluster [default: one per core]."),
        click.option("--scheduler", default=None, help="Address of a running Dask scheduler (else DASK_SCHEDULER_ADDRESS, else a LocalCluster)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _run_train(source: str | None, train_months: str, val_month: str, output: Path, taxi: str, alpha: float,
               numeric: str, chunk_rows: int, cache_dir: Path | None, n_workers: int | None, scheduler: str | None) -> None:
    from pipeline.config import TrainConfig
    from pipeline.reader import preflight

    extra: dict[str, Any] = {} if source is None else {"source": source}
    config = TrainConfig.from_flags(
        train_months, val_month, output=output, taxi=taxi, alpha=alpha, chunk_rows=chunk_rows, cache_dir=cache_dir,
        numeric=[c.strip() for c in numeric.split(",") if c.strip()], **extra,
    )
    preflight(config)
    from cluster import ClusterSpec  # Prefect and Dask load only once the input looks sound
    from pipeline.run import train as run_train

    metrics = run_train(config, ClusterSpec(address=scheduler, n_workers=n_workers), announce=_err.print)
    _out.print(_metrics_table(metrics, f"trained on {', '.join(metrics['train_months'])}, validated on {metrics['val_month']}"))
    _out.print(f"model and metrics in {output}")


@cli.command()
@click.option("--train-months", required=True, help="e.g. 2023-01:2023-02")
@click.option("--val-month", required=True, help="e.g. 2023-03")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for model and metrics.")
@_train_options
def train(**kwargs: Any) -> None:
    """Train on months, validate on another, write the model and metrics.json."""
    _run_train(**kwargs)


@cli.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("data/synth"), show_default=True)
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--rows", type=click.IntRange(min=1), default=3_000_000, show_default=True, help="Rows per generated month.")
@click.option("--n-workers", type=click.IntRange(min=1), default=None)
def demo(data: Path, output: Path, rows: int, n_workers: int | None) -> None:
    """Generate three months (once) and train on two, validating on the third, on a LocalCluster."""
    from pipeline.months import parse_months
    from pipeline.sources import month_filename
    from pipeline.synth import write_months

    months = parse_months("2023-01:2023-03")
    missing = [m for m in months if not (data / month_filename("yellow", m)).exists()]
    if missing:
        _err.print(f"generating {len(missing)} month(s) of {rows:,} rows in {data}")
        write_months(data, missing, rows, seed=0)
    _run_train(str(data), "2023-01:2023-02", "2023-03", output, "yellow", 1e-3, "", 2_000_000, None, n_workers, None)


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
