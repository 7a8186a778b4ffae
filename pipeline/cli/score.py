"""``predict`` (batch scoring with a monitoring report) and ``serve`` (the HTTP prediction service)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import click

from pipeline.cli.common import CLUSTER_OPTIONS, STORAGE_OPTIONS, cli, err, out, table, with_options


@cli.command()
@click.option("--model", "model_dir", default=None, help="A model folder or URL (model.json + its files).")
@click.option("--registry", default=None, help="A model registry (folder or URL): score with its champion, or --version.")
@click.option("--version", "version", default=None, help="A registry version, e.g. v0003 [default: the champion].")
@click.option("--source", default=None, help="Folder, http(s):// prefix or fsspec URL of the month files [default: the TLC prefix].")
@click.option("--taxi", type=click.Choice(["yellow", "green"]), default="yellow", show_default=True)
@click.option("--months", required=True, help="Months to score, e.g. 2023-04:2023-06.")
@click.option("--output", required=True, help="Folder or URL (s3://bucket/prefix) for month=YYYY-MM/part-*.parquet and the report.")
@STORAGE_OPTIONS
@click.option(
    "--max-psi", type=click.FloatRange(min=0), default=0.2, show_default=True, help="Drift alarm: PSI of pickup, dropoff or pair mix."
)
@click.option(
    "--max-rmse-ratio", type=click.FloatRange(min=0), default=1.5, show_default=True, help="Error alarm: RMSE over the training RMSE."
)
@click.option("--chunk-rows", type=click.IntRange(min=1), default=4_000_000, show_default=True, help="Rows per task.")
@with_options(CLUSTER_OPTIONS)
def predict(
    model_dir: str | None,
    registry: str | None,
    version: str | None,
    source: str | None,
    taxi: str,
    months: str,
    output: str,
    max_psi: float,
    max_rmse_ratio: float,
    chunk_rows: int,
    **cluster_options: Any,
) -> None:
    """Score months with a model on Dask: partitioned predictions, report.md, report.png and report.json."""
    from pipeline.core.config import DEFAULT_SOURCE
    from pipeline.core.months import parse_months
    from pipeline.edge import predictions
    from pipeline.edge.model_files import load_any
    from pipeline.errors import PipelineError

    try:
        chosen = parse_months(months)
    except PipelineError as exc:
        raise PipelineError(f"--months {months!r}: {exc}") from None
    predictions.check_output(output)
    from pipeline.edge.reader import locate

    source = source or DEFAULT_SOURCE
    from pipeline.flows.score import model_folder  # the checks below fail before any server starts

    folder = model_folder(model_dir, registry, version)
    model = load_any(folder)
    from pipeline.edge.sources import check_remote_months, is_local
    from pipeline.edge.storage import is_remote

    if is_local(source):
        for month in chosen:
            locate(source, taxi, month, model.spec.columns())
    else:
        check_remote_months(source, taxi, chosen)  # a missing bucket or month: one line, before the API and cluster start
    from cluster import ClusterSpec, check_cluster
    from pipeline.core import render
    from pipeline.flows.score import score_flow
    from pipeline.runtime.interrupts import completed
    from pipeline.runtime.local_stack import run_services

    cluster = ClusterSpec(**cluster_options)
    check_cluster(cluster)
    with run_services(cluster, err.print, "pipeline.flows.score") as where:
        result = score_flow(
            months=months,
            output=output if is_remote(output) else str(Path(output).resolve()),
            model=str(folder),
            source=source,
            taxi=cast(Any, taxi),
            max_psi=max_psi,
            max_rmse_ratio=max_rmse_ratio,
            chunk_rows=chunk_rows,
            cluster=where,
        )
        completed()  # predictions and report are written: a Ctrl-C from here on no longer undoes the run
    drawn = table(f"scored {result.rows:,} rows with {result.model}", render.MONITORING_HEADER, render.monitoring_rows(result.months))
    from rich.console import Console

    Console(width=max(out.width, 160)).print(drawn)  # ten columns: wider than a default terminal's 80
    out.print(f"predictions and report.md, report.png, report.json in {output}; {result.breaches} breach(es)")


@cli.command()
@click.option("--model", "model_dir", default=None, help="A model folder or URL to serve.")
@click.option("--registry", default=None, help="A model registry: serve its champion; a new champion is picked up without a restart.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=10_000, show_default=True, help="Most trips in one request.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="uvicorn processes answering on the port, each with its own copy of the model (about one per core).",
)
@STORAGE_OPTIONS
def serve(model_dir: str | None, registry: str | None, host: str, port: int, max_batch: int, workers: int) -> None:
    """The HTTP prediction service: POST /predict, GET /health, GET /model, GET /docs."""
    if (model_dir is None) == (registry is None):
        raise click.UsageError("give one of --model DIR or --registry R")
    from pipeline.service.app import ModelSource
    from pipeline.service.app import serve as run  # FastAPI and uvicorn load only here

    source = ModelSource.folder(model_dir) if model_dir else ModelSource.registry(registry or "")
    err.print(f"serving {source.location} on http://{host}:{port} (OpenAPI page: /docs); Ctrl-C stops it")
    run(source, host=host, port=port, max_batch=max_batch, workers=workers)
