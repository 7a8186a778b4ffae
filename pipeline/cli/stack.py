"""``up``, ``down``, ``status``: the local Prefect API and Dask cluster that later runs reuse."""

from __future__ import annotations

import click

from pipeline.cli.common import cli, err, out
from pipeline.runtime import stack_record


@cli.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=stack_record.DEFAULT_PORT,
    show_default=True,
    help="The Prefect API and UI's port on 127.0.0.1.",
)
@click.option("--n-workers", type=click.IntRange(min=1), default=None, help="Dask workers [default: one per core].")
@click.option("--threads-per-worker", type=click.IntRange(min=1), default=1, show_default=True)
def up(port: int, n_workers: int | None, threads_per_worker: int) -> None:
    """Start a Prefect API (with its UI) and a LocalCluster that train, retrain and predict then reuse."""
    from pipeline.runtime import local_stack

    local_stack.check_prefect()  # before the line below: a refusal is one line
    err.print("starting the local stack: a Prefect server and a LocalCluster (10 to 80 s, by load)")
    stack, started = local_stack.up(port, n_workers, threads_per_worker)
    out.print("local stack up" if started else "the local stack was already up", highlight=False)
    for line in stack.describe():
        out.print(f"  {line}", highlight=False, soft_wrap=True)
    out.print("runs of train, retrain and predict now use it; `taxi-pipeline down` stops it", highlight=False)


@cli.command()
def down() -> None:
    """Stop the local stack that `up` started (its cluster, then its API)."""
    from pipeline.runtime import local_stack

    stopped = local_stack.down()
    out.print(f"stopped the local stack (pid {stopped.pid})" if stopped else "no local stack is up", highlight=False)


@cli.command()
def status() -> None:
    """Say whether the local stack is up, and where; exit 1 when it is not."""
    stack = stack_record.current()
    if stack is None:
        out.print("no local stack is up (start one with `taxi-pipeline up`)", highlight=False)
        raise SystemExit(1)
    out.print("local stack up", highlight=False)
    for line in stack.describe():
        out.print(f"  {line}", highlight=False, soft_wrap=True)
