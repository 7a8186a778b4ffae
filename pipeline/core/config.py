"""One typed, self-checking settings object for a training run, built at the entry point and passed down.

Every rule lives here, so the Python API and the CLI refuse the same things.
A broken rule is a :class:`ConfigError` naming the fields at fault; the CLI
prints it with its flag names instead (``val_month`` -> ``--val-month``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, ValidationInfo, model_validator

from pipeline.core.features import FeatureSpec
from pipeline.core.months import Month, parse_months
from pipeline.core.terms import ZONE_TERMS, TermError, split_terms, with_quantile_edges
from pipeline.errors import PipelineError

#: The public TLC prefix: ``{DEFAULT_SOURCE}/yellow_tripdata_2023-01.parquet``.
DEFAULT_SOURCE = "https://d37ci6vzurychx.cloudfront.net/trip-data"

Taxi = Literal["yellow", "green"]
#: ``linear`` trains exactly from statistics; ``xgboost`` trains boosted trees on every row over the whole cluster
#: (``xgboost.dask``); the others fit on rows, fold by fold.
ModelName = Literal["linear", "hist_gradient_boosting", "sgd", "xgboost"]
#: The numeric column the boosted model reads (its design is fixed: zones, distance, pickup hour and weekday).
BOOSTED_NUMERIC = ("trip_distance",)
CVKind = Literal["kfold", "time"]
#: The MLflow experiment a tracked run goes to unless ``mlflow_experiment`` names another.
DEFAULT_EXPERIMENT = "taxi-trip-duration"


class ConfigError(PipelineError):
    """A broken rule; ``template`` names fields as ``{field}``, filled with field or flag names."""

    def __init__(self, template: str, **values: object) -> None:
        self.template = template
        self.values = values
        super().__init__(self.render())

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_config_error, (self.template, self.values)

    def render(self, names: dict[str, str] | None = None) -> str:
        """The message with each ``{field}`` spelt as ``names[field]`` (default: the field name)."""
        fields = {field: (names or {}).get(field, field) for field in TrainConfig.model_fields}
        return self.template.format(**fields, **self.values)


def _rebuild_config_error(template: str, values: dict[str, object]) -> ConfigError:
    return ConfigError(template, **values)


def _month(value: object) -> Month:
    if isinstance(value, Month):
        return value
    if isinstance(value, str):
        return Month.parse(value)
    raise PipelineError(f"invalid month {value!r}: expected YYYY-MM")


def _checked(parse: Any) -> Any:
    """Run ``parse`` on a field's value; a bad value is a ConfigError naming the field."""

    def validate(value: object, info: ValidationInfo) -> Any:
        try:
            return parse(value)
        except PipelineError as exc:
            raise ConfigError(f"{{{info.field_name}}} {{given}}: {{why}}", given=repr(value), why=str(exc)) from None

    return validate


def _months(value: object) -> tuple[Month, ...]:
    """A spec string (``2023-01:2023-03,2023-05``) or a sequence of months."""
    if isinstance(value, str):
        return tuple(parse_months(value))
    if isinstance(value, (list, tuple)):
        return tuple(sorted({_month(v) for v in value}))
    raise PipelineError("expected a list of YYYY-MM or a spec such as 2023-01:2023-03")


def _location(value: object) -> str:
    """A folder or a storage URL (``s3://bucket/prefix``), kept as text: ``Path`` would fold ``s3://`` into ``s3:/``."""
    if isinstance(value, (str, PurePath)):
        return str(value)
    raise PipelineError("expected a folder or a URL such as s3://bucket/prefix")


#: Query parameters that carry a secret (presigned S3 and Azure SAS signatures, tokens, keys).
_SECRET_QUERY = re.compile(r"(^|[-_.])(signature|sig|token|key|secret|password|credential)s?($|[-_.])", re.IGNORECASE)


def _holds_credentials(location: str | None) -> bool:
    """A URL with ``user:password@`` or a secret-looking query parameter (``?X-Amz-Signature=``, ``?sig=``, ``?token=``)."""
    if location is None or "://" not in location:
        return False
    parts = urlsplit(location)
    return parts.password is not None or any(_SECRET_QUERY.search(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True))


#: Where a run writes: a local folder or a storage URL.
Location = Annotated[str, BeforeValidator(_checked(_location))]
MonthValue = Annotated[Month, BeforeValidator(_checked(_month)), PlainSerializer(str, return_type=str)]
MonthList = Annotated[
    tuple[Month, ...], BeforeValidator(_checked(_months)), PlainSerializer(lambda ms: [str(m) for m in ms], return_type=list[str])
]


def candidate_terms(candidate: tuple[str, ...] | str) -> tuple[str, ...]:
    """A candidate's full term list: ``base`` is the seed's terms, and a candidate naming no zone term keeps the seed's."""
    items = split_terms(candidate.replace("+", ",")) if isinstance(candidate, str) else [t for c in candidate for t in split_terms(c)]
    terms = [t for item in items for t in (ZONE_TERMS if item == "base" else (item,))]
    if not any(t in ZONE_TERMS for t in terms):
        terms = [*ZONE_TERMS, *terms]
    return tuple(dict.fromkeys(terms))


class TrainConfig(BaseModel):
    """Everything a training run needs. Months may be given as ``Month``, ``"YYYY-MM"`` or a spec string."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = DEFAULT_SOURCE
    taxi: Taxi = "yellow"
    train_months: MonthList
    val_month: MonthValue
    output: Location
    alphas: tuple[float, ...] = Field(default=(1e-3,), min_length=1, description="ridge penalties; CV picks the best")
    folds: int = Field(default=5, ge=0, description="K-fold CV over training rows; 0 turns CV off")
    cv: CVKind = "kfold"
    seed: int = Field(default=0, ge=0, description="drives fold assignment and estimators")
    model: ModelName = "linear"
    max_rows: int | None = Field(default=None, ge=1, description="row cap per fit for estimators other than linear")
    features: tuple[str, ...] = Field(
        default=ZONE_TERMS,
        min_length=1,
        description="the model's terms: zone one-hots, numeric columns, COLUMN:logN bins, hour, weekday, hour_of_week, A*B",
    )
    read_also: tuple[str, ...] = Field(
        default=(),
        description="terms read beside the feature sets' (a champion's, so it is scored from the same statistics); needs candidates",
    )
    boosted_challenger: bool = Field(
        default=False,
        description="also fit xgboost on K-fold CV's fold 0 and keep it if it beats the chosen linear candidate on the same rows",
    )
    xgb_rounds: int = Field(default=100, ge=1, description="boosting rounds of --model xgboost (100: best on the real months)")
    numeric: tuple[str, ...] = Field(default=(), description="numeric columns added to the terms")
    candidates: tuple[tuple[str, ...], ...] = Field(
        default=(),
        description="feature sets (term lists) compared by CV from one read; one without zone terms keeps the seed's; the best is kept",
    )
    chunk_rows: int = Field(default=4_000_000, ge=1, description="rows per task, rounded to row groups")
    cache_dir: Path | None = None
    cache: bool = Field(default=True, description="reuse chunk statistics of unchanged month files")
    stats_cache: str | None = Field(
        default=None,
        description="folder or fsspec URL of the statistics cache [default: $TAXI_PIPELINE_STATS_CACHE, else <cache dir>/stats]",
    )
    mlflow: bool = Field(default=False, description="log the run to MLflow (the [mlflow] extra)")
    mlflow_uri: str | None = Field(default=None, min_length=1, description="MLflow tracking URI [default: MLFLOW_TRACKING_URI]")
    mlflow_experiment: str = Field(default=DEFAULT_EXPERIMENT, min_length=1, description="MLflow experiment, made on first use")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if not self.train_months:
            raise ConfigError("{train_months}: give at least one training month")
        if self.val_month in self.train_months:
            raise ConfigError(
                "{val_month} {month} is also in {train_months}: the model would be validated on rows it was trained on",
                month=self.val_month,
            )
        if not all(math.isfinite(a) and a > 0 for a in self.alphas):
            raise ConfigError("{alphas} {given}: every alpha must be a positive number", given=",".join(f"{a:g}" for a in self.alphas))
        if self.folds == 1:
            raise ConfigError("{folds} 1: one fold cannot cross-validate; use 0 to turn CV off, or 2 and more")
        if self.model != "linear" and self.cv == "time":
            raise ConfigError("{cv} time: supported for {model} linear; {name} cross-validates by kfold", name=self.model)
        if self.model != "linear" and len(self.alphas) > 1:
            raise ConfigError("{alphas}: an alpha grid applies to {model} linear, not {name}", name=self.model)
        if len(self.alphas) > 1 and not self.cross_validates:
            raise ConfigError(
                "{alphas} {given} with {folds} 0: without cross-validation nothing chooses among alphas; "
                "give one alpha, or 2 or more folds",
                given=",".join(f"{a:g}" for a in self.alphas),
            )
        if self.candidates and (self.model != "linear" or not self.cross_validates or self.cv != "kfold"):
            raise ConfigError("{candidates}: comparing feature sets needs {model} linear and K-fold CV (2 or more {folds}, {cv} kfold)")
        if self.model == "xgboost" and self.numeric not in ((), BOOSTED_NUMERIC):
            raise ConfigError("{numeric}: {model} xgboost has a fixed design (zones, trip_distance, pickup hour and weekday)")
        if self.read_also and not self.candidates:
            raise ConfigError("{read_also}: terms read beside the model's need {candidates} (a run without them fits what it reads)")
        if self.boosted_challenger and (self.model != "linear" or self.stats_folds < 2):
            raise ConfigError("{boosted_challenger}: a boosted challenger is compared in {model} linear's K-fold CV (2 or more {folds})")
        if self.model == "xgboost" and self.max_rows is not None:
            raise ConfigError("{max_rows}: {model} xgboost trains on every row, spread over the cluster")
        if len(set(self.feature_sets())) != len(self.feature_sets()):
            raise ConfigError("{candidates}: a feature set is listed twice")
        for field, sets in (("features", (self.model_terms(),)), ("candidates", self.feature_sets())):
            for terms in sets:
                try:
                    FeatureSpec.of(terms)
                except TermError as exc:
                    raise ConfigError("{" + field + "} {given}: {why}", given=",".join(terms), why=str(exc)) from None
        if self.model != "linear" and (self.features != ZONE_TERMS or any(":" in t for t in self.numeric)):
            raise ConfigError("{features}: terms apply to {model} linear; {name} reads the zones and {numeric}", name=self.model)
        if self.cv == "time" and self.folds and len(self.train_months) < 2:
            raise ConfigError("{cv} time: needs at least two {train_months} (train on earlier, validate on the next)")
        for field in ("source", "output", "stats_cache"):
            if _holds_credentials(getattr(self, field)):
                raise ConfigError(
                    "{" + field + "}: the URL holds credentials, and a run's parameters, logs and metrics.json keep its locations; "
                    "give them through the environment, the AWS config files or --storage-options @FILE"
                )
        if self.mlflow_uri is not None and not self.mlflow:
            raise ConfigError("{mlflow_uri} given without {mlflow}: add {mlflow} to track the run")
        if self.mlflow_uri is not None and urlsplit(self.mlflow_uri).password is not None:
            raise ConfigError(
                "{mlflow_uri}: holds a password, and run parameters are stored and shown by Prefect; "
                "set MLFLOW_TRACKING_URI, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, instead"
            )
        return self

    @property
    def cross_validates(self) -> bool:
        return self.folds >= 2

    @property
    def stats_folds(self) -> int:
        """Folds the training months' statistics are kept in: K-fold CV's, else one."""
        return self.folds if self.cross_validates and self.cv == "kfold" else 1

    def months(self) -> tuple[list[Month], Month]:
        """Training months and validation month."""
        return list(self.train_months), self.val_month

    def model_terms(self) -> tuple[str, ...]:
        """The terms of the model trained when no candidates are compared: ``features`` and ``numeric``."""
        return tuple(dict.fromkeys([*self.features, *self.numeric]))

    def feature_spec(self) -> FeatureSpec:
        """What a run reads: every term of every feature set (and ``numeric``; xgboost's columns), in first-seen order."""
        boosted = BOOSTED_NUMERIC if self.model == "xgboost" else ()
        terms = dict.fromkeys([*(t for terms in self.feature_sets() for t in terms), *self.numeric, *self.read_also, *boosted])
        return FeatureSpec.of(tuple(terms))

    def with_quantile_edges(self, edges: dict[tuple[str, int], tuple[float, ...]]) -> TrainConfig:
        """This config with the edges a run measured written into its quantile bins' terms (``trip_distance:q32[...]``)."""

        def fixed(items: Iterable[str]) -> tuple[str, ...]:
            return tuple(with_quantile_edges(term, edges) for item in items for term in split_terms(item))

        update = {"features": fixed(self.features), "read_also": fixed(self.read_also)}
        return self.model_copy(update={**update, "candidates": tuple(fixed(candidate_terms(c)) for c in self.candidates)})

    def feature_sets(self) -> tuple[tuple[str, ...], ...]:
        """The feature sets CV compares, as full term lists: the candidates, or the model's terms alone."""
        return tuple(candidate_terms(c) for c in self.candidates) or (self.model_terms(),)

    @classmethod
    def build(cls, **fields: Any) -> TrainConfig:
        """Like the constructor, but a pydantic type error is a :class:`ConfigError` naming the field too."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            name = f"{{{field}}}" if field in cls.model_fields else field.replace("{", "{{").replace("}", "}}")
            raise ConfigError(name + " {given}: {why}", given=repr(fields.get(field)), why=first["msg"]) from None
