"""One typed, self-checking settings object per flow (train, retrain, score), built at the entry point and passed down.

Every rule and every default lives here, so the Python API, the CLI, a deployment's parameters and the
docs agree. A broken rule is a :class:`ConfigError` naming the fields at fault; the CLI prints it with
its flag names instead (``val_month`` -> ``--val-month``), and its options are generated from the fields
(``field_option`` in :mod:`pipeline.cli.common`).

The project's non-secret settings that used to be read deep in ``edge/`` (the month cache folder, the
HTTP timeout, the statistics cache and its bound) are fields too: their ``TAXI_PIPELINE_*`` variable
is read once, as the field's default, where the config is built (the CLI, a Python call, or a
deployment's run from its parameters). Secrets are not fields: Prefect stores and shows parameters.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path, PurePath
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, ValidationInfo, model_validator
from typing_extensions import Self

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
#: Rows per task, rounded to row groups (every flow's default).
DEFAULT_CHUNK_ROWS = 4_000_000
#: The ridge penalties a retraining run compares by CV.
DEFAULT_ALPHAS = (1e-3, 0.3, 1.0, 3.0, 10.0)
#: Compared on every retraining run unless told otherwise: the seed's features alone, and with the trip distance in
#: 48 log-spaced bins and the hour of the week (real months: 16-20% lower RMSE than the seed's; see the docs' features page).
DEFAULT_CANDIDATES: tuple[tuple[str, ...], ...] = ((), ("trip_distance:log48", "hour_of_week"))
#: Seconds a single socket operation of a download (connect, or one read of the body) may block before a retry.
DEFAULT_HTTP_TIMEOUT = 60.0
#: The statistics cache's bound, applied after each run.
DEFAULT_STATS_CACHE_MAX_BYTES = 2 * 10**9

#: The project's variables, each the default of one field (read where a config is built, never deeper).
MONTH_CACHE_ENV = "TAXI_PIPELINE_CACHE"
HTTP_TIMEOUT_ENV = "TAXI_PIPELINE_HTTP_TIMEOUT"
STATS_CACHE_ENV = "TAXI_PIPELINE_STATS_CACHE"
STATS_CACHE_MAX_BYTES_ENV = "TAXI_PIPELINE_STATS_CACHE_MAX_BYTES"

_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12}
_SIZE_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


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
        return self.template.format_map(_Names(names or {}, self.values))


class _Names(dict[str, object]):
    """A template's values, and any other ``{field}`` spelt by ``names`` (default: the field's own name)."""

    def __init__(self, names: dict[str, str], values: dict[str, object]) -> None:
        super().__init__(values)
        self.names = names

    def __missing__(self, field: str) -> str:
        return self.names.get(field, field)


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


def parse_size(text: str) -> int:
    """``500MB``, ``2GB``, ``1.5GiB`` or plain bytes, as bytes (KB, MB, GB: powers of 1000)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match[2].lower() not in _SIZE_UNITS:
        raise PipelineError(f"size {text!r}: expected bytes or a number with B, KB, MB, GB, TB, KiB, MiB, GiB")
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def _size(value: object) -> int:
    if isinstance(value, str):
        return parse_size(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise PipelineError("expected bytes or a size such as 500MB")


def _from_env(variable: str, parse: Callable[[str], Any], default: Any = None) -> Callable[[], Any]:
    """A field's default: ``$variable`` parsed, else ``default``. A bad value is one line naming the variable."""

    def read() -> Any:
        text = os.environ.get(variable, "").strip()
        if not text:
            return default
        try:
            return parse(text)
        except (PipelineError, ValueError) as exc:
            raise ConfigError("${variable}={given}: {why}", variable=variable, given=repr(text), why=str(exc)) from None

    return read


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError("expected a number of seconds above 0")
    return seconds


def _folder(text: str) -> Path:
    return Path(text).expanduser()


#: Field defaults read from the environment where a config is built (also used by ``taxi-pipeline cache``).
month_cache_default = _from_env(MONTH_CACHE_ENV, _folder)
stats_cache_default = _from_env(STATS_CACHE_ENV, str)
stats_cache_max_bytes_default = _from_env(STATS_CACHE_MAX_BYTES_ENV, parse_size, DEFAULT_STATS_CACHE_MAX_BYTES)


def _check_alphas(alphas: tuple[float, ...], folds: int, model: str) -> None:
    """Positive alphas, and CV to choose among them (a row-fitted model's grid is its config's own rule)."""
    given = ",".join(f"{a:g}" for a in alphas)
    if not all(math.isfinite(a) and a > 0 for a in alphas):
        raise ConfigError("{alphas} {given}: every alpha must be a positive number", given=given)
    if folds == 1:
        raise ConfigError("{folds} 1: one fold cannot cross-validate; use 0 to turn CV off, or 2 and more")
    if model == "linear" and len(alphas) > 1 and folds < 2:
        raise ConfigError(
            "{alphas} {given} with {folds} 0: without cross-validation nothing chooses among alphas; give one alpha, or 2 or more folds",
            given=given,
        )


_C = TypeVar("_C", bound="_Config")


class _Config(BaseModel):
    """What every flow's config shares: frozen, strict about unknown fields, and no credentials in its locations."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Fields holding a location, which is stored and shown with the run's parameters: never credentials.
    _locations: ClassVar[tuple[str, ...]] = ("source",)

    @model_validator(mode="after")
    def _no_credentials(self) -> Self:
        for field in self._locations:
            if _holds_credentials(getattr(self, field)):
                raise ConfigError(
                    "{" + field + "}: the URL holds credentials, and a run's parameters, logs and metrics.json keep its locations; "
                    "give them through the environment, the AWS config files or --storage-options @FILE"
                )
        return self

    @classmethod
    def build(cls: type[_C], **fields: Any) -> _C:
        """Like the constructor, but a pydantic type error is a :class:`ConfigError` naming the field too."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            name = f"{{{field}}}" if field in cls.model_fields else field.replace("{", "{{").replace("}", "}}")
            raise ConfigError(name + " {given}: {why}", given=repr(fields.get(field)), why=first["msg"]) from None


class Reading(_Config):
    """Where the month files are and how they are read: every flow's."""

    source: str = Field(
        default=DEFAULT_SOURCE, description="folder, http(s):// prefix or fsspec URL of the month files [default: the public TLC prefix]"
    )
    taxi: Taxi = Field(default="yellow", description="taxi type of the month files")
    chunk_rows: int = Field(default=DEFAULT_CHUNK_ROWS, ge=1, description="rows per task, rounded to row groups")
    cache_dir: Path | None = Field(
        default_factory=month_cache_default,
        description="where remote months are cached [default: $TAXI_PIPELINE_CACHE, else taxi-pipeline in the XDG cache folder]",
    )
    http_timeout: float = Field(
        default_factory=_from_env(HTTP_TIMEOUT_ENV, _seconds, DEFAULT_HTTP_TIMEOUT),
        gt=0,
        description="seconds a download's connect or read may stay silent before a retry [default: $TAXI_PIPELINE_HTTP_TIMEOUT, else 60]",
    )


class _Training(Reading):
    """What a training run and a retraining run share: the estimator, CV, the statistics cache, MLflow."""

    _locations: ClassVar[tuple[str, ...]] = ("source", "stats_cache")

    folds: int = Field(default=5, ge=0, description="K-fold CV over training rows; 0 turns CV off")
    seed: int = Field(default=0, ge=0, description="drives fold assignment and estimators")
    model: ModelName = Field(
        default="linear",
        description="linear: exact, from statistics; xgboost: boosted trees on every row over the whole cluster (xgboost.dask); "
        "the others fit on rows, fold by fold",
    )
    max_rows: int | None = Field(default=None, ge=1, description="row cap per fit for models other than linear")
    cache: bool = Field(default=True, description="reuse chunk statistics of unchanged month files")
    stats_cache: str | None = Field(
        default_factory=stats_cache_default,
        description="folder or fsspec URL (s3://bucket/prefix) of the chunk statistics cache, shared by the workers "
        "[default: $TAXI_PIPELINE_STATS_CACHE, else stats/ in the month cache folder]",
    )
    stats_cache_max_bytes: Annotated[int, BeforeValidator(_checked(_size))] = Field(
        default_factory=stats_cache_max_bytes_default,
        description="the statistics cache's bound after each run, e.g. 500MB [default: $TAXI_PIPELINE_STATS_CACHE_MAX_BYTES, else 2GB]",
    )
    mlflow: bool = Field(default=False, description="log the run to MLflow (needs the [mlflow] extra)")
    mlflow_uri: str | None = Field(
        default=None, min_length=1, description="MLflow tracking URI, e.g. sqlite:///mlflow.db [default: MLFLOW_TRACKING_URI]"
    )
    mlflow_experiment: str = Field(default=DEFAULT_EXPERIMENT, min_length=1, description="MLflow experiment, made on first use")

    @model_validator(mode="after")
    def _tracking(self) -> Self:
        if self.mlflow_uri is not None and not self.mlflow:
            raise ConfigError("{mlflow_uri} given without {mlflow}: add {mlflow} to track the run")
        if self.mlflow_uri is not None and urlsplit(self.mlflow_uri).password is not None:
            raise ConfigError(
                "{mlflow_uri}: holds a password, and run parameters are stored and shown by Prefect; "
                "set MLFLOW_TRACKING_URI, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, instead"
            )
        return self


class TrainConfig(_Training):
    """Everything a training run needs. Months may be given as ``Month``, ``"YYYY-MM"`` or a spec string."""

    _locations: ClassVar[tuple[str, ...]] = ("source", "output", "stats_cache")

    train_months: MonthList = Field(description="training months, e.g. 2023-01:2023-02")
    val_month: MonthValue = Field(description="the validation month, e.g. 2023-03")
    output: Location = Field(description="folder or URL (s3://bucket/prefix) for model and metrics")
    alphas: tuple[float, ...] = Field(default=(1e-3,), min_length=1, description="ridge penalties, e.g. 0.01,0.1,1,10; CV picks the best")
    cv: CVKind = Field(default="kfold", description="time: train on earlier months, validate on the next")
    features: tuple[str, ...] = Field(
        default=ZONE_TERMS,
        min_length=1,
        description="the model's terms, e.g. PU_DO,trip_distance or PULocationID,DOLocationID,PU_DO,trip_distance:log48,hour_of_week "
        "(zones, numeric columns, COLUMN:logN, COLUMN:qN or COLUMN:[EDGES] bins, hour, hour/4, weekday, hour_of_week, "
        "A*B, PULocationID*hour/4)",
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
    numeric: tuple[str, ...] = Field(default=(), description="numeric columns to add as features, e.g. trip_distance")
    candidates: tuple[tuple[str, ...], ...] = Field(
        default=(),
        description="feature sets to compare by CV from one read, e.g. 'base;base,trip_distance:log48,hour_of_week'; "
        "one without zone terms keeps the seed's; the best wins",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if not self.train_months:
            raise ConfigError("{train_months}: give at least one training month")
        if self.val_month in self.train_months:
            raise ConfigError(
                "{val_month} {month} is also in {train_months}: the model would be validated on rows it was trained on",
                month=self.val_month,
            )
        _check_alphas(self.alphas, self.folds, self.model)
        if self.model != "linear" and self.cv == "time":
            raise ConfigError("{cv} time: supported for {model} linear; {name} cross-validates by kfold", name=self.model)
        if self.model != "linear" and len(self.alphas) > 1:
            raise ConfigError("{alphas}: an alpha grid applies to {model} linear, not {name}", name=self.model)
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


class RetrainConfig(_Training):
    """A retraining run: every field has a default, so a scheduled deployment with no parameters runs.

    The months are not given: the run validates on the newest month published on or before ``as_of``
    (default: its scheduled start) and trains on the ``window`` months before it.
    """

    _locations: ClassVar[tuple[str, ...]] = ("source", "registry", "stats_cache")

    registry: Location = Field(
        default="runs/registry", description="model registry folder or URL, e.g. s3://bucket/registry (made on first use)"
    )
    as_of: date | None = Field(
        default=None, description="train as of this date, YYYY-MM-DD [default: the run's scheduled start, else today]"
    )
    window: int = Field(default=2, ge=1, description="training months before the validation month")
    alphas: tuple[float, ...] = Field(default=DEFAULT_ALPHAS, min_length=1, description="ridge penalties; CV picks the best")
    candidates: tuple[tuple[str, ...], ...] = Field(
        default=DEFAULT_CANDIDATES,
        description="feature sets (term lists) compared from one read; one without zone terms keeps the seed's; the best wins",
    )
    boosted: bool = Field(
        default=True,
        description="also fit xgboost on the cluster and keep it if it beats the best linear candidate on the same held-out rows",
    )
    notify: str | None = Field(default=None, description="a saved Prefect notification block, TYPE/NAME (e.g. slack-webhook/ops)")
    notify_on_completion: bool = Field(default=False, description="send a message when a run completes, too")
    repair: bool = Field(
        default=False,
        description="if the champion is damaged (a file missing or replaced, champion.json unreadable), promote this run's model "
        "over it, and cut off a torn last line of history.jsonl; without it, a damaged registry is refused",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RetrainConfig:
        _check_alphas(self.alphas, self.folds, self.model)
        if not self.compares_candidates and len(self.candidates) > 1 and self.candidates != DEFAULT_CANDIDATES:
            raise ConfigError("{candidates}: comparing feature sets needs {model} linear and 2 or more {folds}")
        for terms in self.candidates:
            try:
                FeatureSpec.of(candidate_terms(terms))
            except TermError as exc:
                raise ConfigError("{candidates} {given}: {why}", given=",".join(terms), why=str(exc)) from None
        return self

    @property
    def compares_candidates(self) -> bool:
        """Whether CV compares feature sets (and a boosted challenger): linear with K-fold CV."""
        return self.model == "linear" and self.folds >= 2

    def train_config(self, train: list[Month], val: Month, output: str | PurePath, champion_terms: tuple[str, ...] = ()) -> TrainConfig:
        """The challenger's training run: this run's settings on the chosen months, written to ``output``.

        ``champion_terms`` (a linear champion's) are read too, so the champion is scored from the same statistics.
        Without linear K-fold CV nothing compares feature sets: the one given, else the seed's, is trained.
        """
        shared = self.model_dump(include=set(_Training.model_fields) - {"model"}, exclude_unset=False)
        alphas = self.alphas if self.model == "linear" else self.alphas[:1]  # row-fitted models have no alpha grid
        months = {"train_months": train, "val_month": val, "output": output, "model": self.model, "alphas": alphas}
        if self.compares_candidates:
            return TrainConfig.build(
                **shared, **months, candidates=self.candidates, read_also=champion_terms, boosted_challenger=self.boosted
            )
        terms = candidate_terms(self.candidates[0] if len(self.candidates) == 1 else ())
        if self.model != "linear":  # row-fitted models read the zones and numeric columns
            return TrainConfig.build(**shared, **months, numeric=FeatureSpec.of(terms).numeric)
        return TrainConfig.build(**shared, **months, features=terms)


class ScoreConfig(Reading):
    """A scoring run: months scored with a model folder, or with a registry's champion (or ``version``)."""

    _locations: ClassVar[tuple[str, ...]] = ("source", "output", "model", "registry")

    months: MonthList = Field(description="months to score, e.g. 2023-04:2023-06")
    output: Location = Field(description="folder or URL (s3://bucket/prefix) for month=YYYY-MM/part-*.parquet and the report")
    model: str | None = Field(default=None, description="a model folder or URL (model.json + its files)")
    registry: str | None = Field(default=None, description="a model registry (folder or URL): score with its champion, or version")
    version: str | None = Field(default=None, description="a registry version, e.g. v0003 [default: the champion]")
    max_psi: float = Field(default=0.2, ge=0, description="drift alarm: PSI of pickup, dropoff or pair mix")
    max_rmse_ratio: float = Field(default=1.5, ge=0, description="error alarm: RMSE over the training RMSE")

    @model_validator(mode="after")
    def _one_model(self) -> ScoreConfig:
        if not self.months:
            raise ConfigError("{months}: give at least one month")
        if (self.model is None) == (self.registry is None):
            raise ConfigError("give one model: {model} DIR or {registry} R [{version} V]")
        if self.model is not None and self.version is not None:
            raise ConfigError("{version} goes with {registry}, not {model}")
        return self
