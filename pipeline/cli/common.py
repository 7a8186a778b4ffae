"""What the commands share: the consoles, the command group, the option sets and how tables are drawn."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from pipeline.core.terms import split_terms

err = Console(stderr=True)
out = Console()


def table(title: str, header: tuple[str, ...], rows: Sequence[tuple[str, ...]], whole: tuple[str, ...] = ()) -> Table:
    """A rich table of rows already spelt by :mod:`pipeline.core.render`; the columns named in ``whole`` are never
    wrapped or cut (on a narrow terminal the others give way, folded rather than cut with "…"), as a cut timestamp
    (``2026-12-07T0…``) says nothing."""
    drawn = Table(title=title)
    for index, column in enumerate(header):
        widest = max((len(row[index]) for row in rows), default=0) if column in whole else None
        left = index == 0 and header[0] in ("metric", "field")
        drawn.add_column(column, justify="left" if left else "right", no_wrap=column in whole, min_width=widest, overflow="fold")
    for row in rows:
        drawn.add_row(*row)
    return drawn


@click.group()
@click.version_option(package_name="taxi-pipeline")
def cli() -> None:
    """Train NYC taxi trip-duration models with Prefect on Dask."""


def comma_list(flag: str, convert: Any) -> Any:
    """A click callback parsing ``a,b,c`` into a list, naming ``flag`` when an item is bad."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list[Any] | None:
        if value is None:
            return None
        try:
            return [convert(item.strip()) for item in value.split(",") if item.strip()]
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of {convert.__name__}s", param_hint=flag) from None

    return parse


def feature_sets(ctx: click.Context, param: click.Parameter, value: str | None) -> list[tuple[str, ...]] | None:
    """``base;base,trip_distance:log48,hour_of_week;PU_DO,trip_distance``: feature sets (term lists, ``+`` or ``,``
    between terms), ``base`` for the seed's one-hots; a set naming no zone term keeps them."""
    if value is None:
        return None
    sets = []
    for item in value.split(";"):
        terms = tuple(split_terms(item.replace("+", ",")))
        if not terms:
            raise click.BadParameter(
                f"{value!r}: expected feature sets like base;trip_distance:log48,hour_of_week;PU_DO,trip_distance",
                param_hint="--candidates",
            )
        sets.append(terms)
    return sets


def terms_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """``--features``: a comma list of terms (commas inside brackets kept)."""
    return None if value is None else split_terms(value)


def _storage_options(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Check ``--storage-options`` and hand it to every process of the run through the environment, never a parameter."""
    if value is None:
        return
    from pipeline.edge.storage import STORAGE_OPTIONS_ENV, parse_options

    parse_options(value)  # bad JSON, or a credential inline: one line, before anything runs
    os.environ[STORAGE_OPTIONS_ENV] = value


#: ``--storage-options``: file system options for s3:// and other fsspec locations (never credentials inline).
STORAGE_OPTIONS = click.option(
    "--storage-options",
    callback=_storage_options,
    expose_value=False,
    help='fsspec options for s3:// and other URLs, e.g. \'{"endpoint_url": "http://127.0.0.1:5000"}\', or @FILE; '
    "credentials from the environment, the AWS config files or @FILE, never inline.",
)

#: MLflow tracking (TrainConfig fields, retrain-trip-duration parameters): the training run as an MLflow run.
MLFLOW_OPTIONS = [
    click.option("--mlflow", is_flag=True, default=None, help="Log the run to MLflow (needs the [mlflow] extra)."),
    click.option("--mlflow-uri", default=None, help="MLflow tracking URI, e.g. sqlite:///mlflow.db [default: MLFLOW_TRACKING_URI]."),
    click.option("--mlflow-experiment", default=None, help="MLflow experiment, made on first use [default: taxi-trip-duration]."),
]
#: Options that configure the training run (TrainConfig fields); the rest choose the cluster.
TRAIN_OPTIONS = [
    click.option(
        "--source", default=None, help="Folder, http(s):// prefix or fsspec URL of the month files [default: the public TLC prefix]."
    ),
    click.option("--taxi", type=click.Choice(["yellow", "green"]), default=None, help="[default: yellow]"),
    click.option(
        "--alphas",
        callback=comma_list("--alphas", float),
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
        type=click.Choice(["linear", "hist_gradient_boosting", "sgd", "xgboost"]),
        default=None,
        help="linear: exact, from statistics [default]; xgboost: boosted trees on every row over the whole cluster "
        "(xgboost.dask); the others fit on rows, fold by fold.",
    ),
    click.option("--xgb-rounds", type=click.IntRange(min=1), default=None, help="Boosting rounds of --model xgboost [default: 100]."),
    click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Row cap per fit for models other than linear."),
    click.option(
        "--features",
        callback=terms_list,
        default=None,
        help="The model's terms, e.g. PU_DO,trip_distance or PULocationID,DOLocationID,PU_DO,trip_distance:log48,hour_of_week "
        "(zones, numeric columns, COLUMN:logN or COLUMN:[EDGES] bins, hour, hour/4, weekday, hour_of_week, A*B) "
        "[default: PULocationID,DOLocationID,PU_DO].",
    ),
    click.option(
        "--numeric", callback=comma_list("--numeric", str), default=None, help="Numeric columns to add as features, e.g. trip_distance."
    ),
    click.option(
        "--candidates",
        callback=feature_sets,
        default=None,
        help="Feature sets to compare by CV from one read, e.g. 'base;base,trip_distance:log48,hour_of_week'; the best wins.",
    ),
    click.option(
        "--chunk-rows", type=click.IntRange(min=1), default=None, help="Rows per task, rounded to row groups [default: 4,000,000]."
    ),
    click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where remote months are cached."),
    click.option("--cache/--no-cache", default=None, help="Reuse chunk statistics of unchanged month files [default: cache]."),
    *MLFLOW_OPTIONS,
    click.option(
        "--stats-cache",
        default=None,
        help="Folder or fsspec URL (s3://bucket/prefix) of the chunk statistics cache, shared by the workers "
        "[default: $TAXI_PIPELINE_STATS_CACHE, else stats/ in the month cache folder].",
    ),
]
CLUSTER_OPTIONS = [
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


def with_options(options: list[Any]) -> Any:
    def decorate(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def flag_names() -> dict[str, str]:
    """Each TrainConfig field's flag: ``val_month`` -> ``--val-month``."""
    from pipeline.core.config import TrainConfig

    return {name: "--" + name.replace("_", "-") for name in TrainConfig.model_fields}
