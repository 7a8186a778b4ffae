"""What the commands share: the consoles, the command group, the option sets and how tables are drawn."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin

import click
from rich.console import Console
from rich.table import Table

from pipeline.core.terms import split_terms
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

_M = TypeVar("_M", bound="BaseModel")

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


def storage_options(command: Any) -> Any:
    """``--storage-options``: fsspec options for s3:// and other locations, checked and handed to every process of the
    run through ``$TAXI_PIPELINE_STORAGE_OPTIONS``, set in the command's body once parsing is done.

    Not a config field: it may carry a secret (a key in ``@FILE``), and Prefect stores and shows a run's parameters.
    """

    @functools.wraps(command)
    def run(*args: Any, storage_options: str | None = None, **kwargs: Any) -> Any:
        if storage_options is not None:
            from pipeline.edge.storage import STORAGE_OPTIONS_ENV, parse_options

            parse_options(storage_options)  # bad JSON, or a credential inline: one line, before anything runs
            os.environ[STORAGE_OPTIONS_ENV] = storage_options  # this process's workers and the run's inherit it
        return command(*args, **kwargs)

    return click.option(
        "--storage-options",
        default=None,
        help='fsspec options for s3:// and other URLs, e.g. \'{"endpoint_url": "http://127.0.0.1:5000"}\', or @FILE; '
        "credentials from the environment, the AWS config files or @FILE, never inline.",
    )(run)


def flag(field: str) -> str:
    """A config field's flag: ``val_month`` -> ``--val-month``."""
    return "--" + field.replace("_", "-")


def shown_default(value: Any) -> str | None:
    """A field's default as a flag would take it (``0.001,0.3,1,3,10``, ``base;trip_distance:log48``), None for none."""
    if value is None or value is False or value == ():
        return None
    if isinstance(value, bool):
        return "on"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple) and all(isinstance(v, tuple) for v in value):
        return ";".join(",".join(v) or "base" for v in value)
    if isinstance(value, tuple):
        return ",".join(shown_default(v) or "" for v in value)
    return str(value)


def field_help(field: FieldInfo, required: bool = False) -> str:
    """A flag's help: its field's description, and the default when the description does not say it (nor the flag is required)."""
    text = field.description or ""
    text = text[:1].upper() + text[1:]
    shown = None if required or field.is_required() or "[default:" in text else shown_default(field.default)
    return f"{text} [default: {shown}]." if shown else f"{text}."


def field_option(model: type[BaseModel], name: str, *decls: str, **kwargs: Any) -> Any:
    """The option that sets ``model``'s field ``name``: its description as help, the values of a ``Literal`` field as its
    choices, and no default of its own, so a flag left unset leaves the field to the model (its default, or its
    environment variable)."""
    annotation = model.model_fields[name].annotation
    if "type" not in kwargs and get_origin(annotation) is Literal:
        kwargs["type"] = click.Choice(get_args(annotation))
    return click.option(
        *(decls or (flag(name),)), name, default=None, help=field_help(model.model_fields[name], bool(kwargs.get("required"))), **kwargs
    )


def train_options() -> list[Any]:
    """Options that configure the training run (TrainConfig fields); the rest choose the cluster."""
    from pipeline.core.config import TrainConfig

    def option(name: str, *decls: str, **kwargs: Any) -> Any:
        return field_option(TrainConfig, name, *decls, **kwargs)

    return [
        option("train_months", required=True),
        option("val_month", required=True),
        option("output", required=True),
        option("source"),
        option("taxi"),
        option("alphas", callback=comma_list("--alphas", float)),
        option("folds", type=int),
        option("cv"),
        option("seed", type=int),
        option("model"),
        option("xgb_rounds", type=int),
        option("max_rows", type=int),
        option("features", callback=terms_list),
        option("numeric", callback=comma_list("--numeric", str)),
        option("candidates", callback=feature_sets),
        option("chunk_rows", type=int),
        option("cache_dir"),
        option("http_timeout", type=float),
        option("cache", "--cache/--no-cache"),
        option("mlflow", "--mlflow", is_flag=True),
        option("mlflow_uri"),
        option("mlflow_experiment"),
        option("stats_cache"),
        option("stats_cache_max_bytes"),
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


def flag_names(model: type[BaseModel]) -> dict[str, str]:
    """Each of ``model``'s fields' flag: ``val_month`` -> ``--val-month``."""
    return {name: flag(name) for name in model.model_fields}


def parsed(model: type[_M], options: dict[str, Any]) -> tuple[_M, Any]:
    """The config from the flags given (unset ones keep the model's defaults) and the cluster from the rest.

    A broken rule is one line naming the flags at fault."""
    from pipeline.cluster import ClusterSpec
    from pipeline.core.config import ConfigError

    fields = {k: v for k, v in options.items() if k in model.model_fields and v is not None}
    try:
        config = model.build(**fields)  # type: ignore[attr-defined]
    except ConfigError as exc:
        raise PipelineError(exc.render(flag_names(model))) from None
    return config, ClusterSpec(**{k: v for k, v in options.items() if k not in model.model_fields})


def absolute(location: str) -> str:
    """A local folder made absolute (a deployment's runs and the local stack's processes start elsewhere); a URL as given."""
    return location if "://" in location else str(Path(location).expanduser().resolve())
