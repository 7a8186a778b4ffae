"""``synth``, ``train`` and ``demo``: make months, train on them, print the run's tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipeline.cli.common import CLUSTER_OPTIONS, cli, err, out, parsed, storage_options, table, train_options, with_options
from pipeline.errors import PipelineError


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
        out.print(f"wrote {path}")


def _run_train(**options: Any) -> None:
    """Parse the flags into a TrainConfig (flags left unset take its defaults), run, print."""
    from pipeline.core import render, screening
    from pipeline.core.config import TrainConfig

    config, cluster = parsed(TrainConfig, options)
    from pipeline.run import train as run_train

    result = run_train(config, cluster, announce=err.print)
    out.print(table(render.title(result), ("metric", "value"), render.metric_rows(result)))
    if result.cv is not None:
        out.print(table(render.cv_title(result.cv), render.cv_header(result.cv), render.cv_rows(result.cv)))
    if result.months:
        out.print(table("rows per month", render.MONTH_ROWS_HEADER, render.month_rows(result.months)))
    for found in screening.unusual(result.months):
        out.print(f"warning: {render.drop_warning(found)}", highlight=False, soft_wrap=True)
    out.print(f"model and metrics in {config.output}")


@cli.command()
@with_options(train_options())
@storage_options
@with_options(CLUSTER_OPTIONS)
def train(**kwargs: Any) -> None:
    """Train on months, validate on another, write the model and metrics.json."""
    _run_train(**kwargs)


@cli.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("data/synth"), show_default=True)
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--rows", type=click.IntRange(min=1), default=3_000_000, show_default=True, help="Rows per generated month.")
@with_options(CLUSTER_OPTIONS)
def demo(data: Path, output: Path, rows: int, **cluster: Any) -> None:
    """Generate three months (once), train on two with 5-fold CV, validate on the third."""
    from pipeline.core.months import parse_months
    from pipeline.edge.synth import months_to_write, write_months

    stale = months_to_write(data, parse_months("2023-01:2023-03"), rows)
    for month, held in stale.items():  # months of another size are not reused: the run would not be the one announced
        if held is not None:
            err.print(f"{data}: month {month} holds {held:,} rows, not {rows:,}: generating it again", highlight=False, soft_wrap=True)
    if stale:
        err.print(f"generating {len(stale)} month(s) of {rows:,} rows in {data}", highlight=False, soft_wrap=True)
        write_months(data, list(stale), rows, seed=0)
    _run_train(
        train_months="2023-01:2023-02", val_month="2023-03", output=output, source=str(data), alphas=[1e-3, 0.1, 1.0, 10.0], **cluster
    )
