"""``predict`` (batch scoring with a monitoring report) and ``serve`` (the HTTP prediction service)."""

from __future__ import annotations

from typing import Any

import click

from pipeline.cli.common import CLUSTER_OPTIONS, absolute, cli, err, field_option, out, parsed, storage_options, table, with_options


def _score_options() -> list[Any]:
    """What a scoring run is told (ScoreConfig fields); the cluster options come on top."""
    from pipeline.core.config import ScoreConfig

    def option(name: str, *decls: str, **kwargs: Any) -> Any:
        return field_option(ScoreConfig, name, *decls, **kwargs)

    return [
        option("model"),
        option("registry"),
        option("version"),
        option("source"),
        option("taxi"),
        option("months", required=True),
        option("output", required=True),
        option("max_psi", type=float),
        option("max_rmse_ratio", type=float),
        option("chunk_rows", type=int),
        option("cache_dir"),
        option("http_timeout", type=float),
    ]


@cli.command()
@with_options(_score_options())
@storage_options
@with_options(CLUSTER_OPTIONS)
def predict(**options: Any) -> None:
    """Score months with a model on Dask: partitioned predictions, report.md, report.png and report.json."""
    from pipeline.core import render
    from pipeline.core.config import ScoreConfig

    output_given = options["output"]
    options["output"] = absolute(output_given)
    config, cluster = parsed(ScoreConfig, options)
    from pipeline.run import score as run_score

    result = run_score(config, cluster, announce=err.print)
    drawn = table(f"scored {result.rows:,} rows with {result.model}", render.MONITORING_HEADER, render.monitoring_rows(result.months))
    from rich.console import Console

    Console(width=max(out.width, 160)).print(drawn)  # ten columns: wider than a default terminal's 80
    out.print(f"predictions and report.md, report.png, report.json in {output_given}; {result.breaches} breach(es)")


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
@storage_options
def serve(model_dir: str | None, registry: str | None, host: str, port: int, max_batch: int, workers: int) -> None:
    """The HTTP prediction service: POST /predict, GET /health, GET /model, GET /docs."""
    if (model_dir is None) == (registry is None):
        raise click.UsageError("give one of --model DIR or --registry R")
    from pipeline.service.app import ModelSource
    from pipeline.service.app import serve as run  # FastAPI and uvicorn load only here

    source = ModelSource.folder(model_dir) if model_dir else ModelSource.registry(registry or "")
    err.print(f"serving {source.location} on http://{host}:{port} (OpenAPI page: /docs); Ctrl-C stops it")
    run(source, host=host, port=port, max_batch=max_batch, workers=workers)
