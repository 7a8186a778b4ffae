"""The ``POST /predict`` body: trips validated by pydantic straight from the JSON bytes, then columns as NumPy arrays.

Why not a FastAPI body parameter: FastAPI parses with ``json.loads`` and then
validates the Python objects, and a pydantic model instance per trip costs
twice what a typed dict does. Here one ``TypeAdapter`` per loaded model (its
numeric columns are only known then) parses and validates the bytes in one
pass (exactly: floats come back bit for bit), and the columns are gathered
with no pandas. The OpenAPI page still shows the schema (:class:`Trip`).
"""

from __future__ import annotations

import json
from datetime import datetime
from operator import itemgetter
from typing import Annotated, Any, cast

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from pipeline.core.features import N_ZONES, FeatureSpec, factor_codes
from pipeline.core.model import input_columns
from pipeline.core.schema import DO, PICKUP, PU

#: Zone ids: integers (not strings, floats or booleans); null is an unknown zone.
ZoneId = StrictInt | None
#: A numeric column: a finite number (an integer is one); null counts as 0, as in training.
Number = Annotated[float | None, Field(strict=True, allow_inf_nan=False)]
#: A validation answer lists this many problems at most: a batch of 10,000 bad trips need not echo 20,000.
MAX_PROBLEMS = 20
#: An input longer than this many characters of JSON is not echoed in a problem.
MAX_ECHO = 200


class Trip(BaseModel):
    """One trip, for the OpenAPI page; requests are checked by the model's :class:`TripParser`."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "description": "Other members: the model's numeric and binned columns (GET /model lists its fields), each a finite "
            "number or null (counts as 0), and the pickup time (tpep_pickup_datetime or lpep_pickup_datetime, as in the month "
            "files, ISO 8601) when a term uses it. Members the model does not use are ignored.",
            "examples": [{"PULocationID": 132, "DOLocationID": 236, "trip_distance": 17.2, "lpep_pickup_datetime": "2021-03-15T08:30:00"}],
        },
    )

    PULocationID: ZoneId = Field(title=PU, description="pickup zone, 1..265; null or any other integer is an unknown zone")
    DOLocationID: ZoneId = Field(title=DO, description="dropoff zone, 1..265; null or any other integer is an unknown zone")


class ModelRef(BaseModel):
    """Which model answered."""

    version: str | None = Field(description="registry version (null when serving a folder)")
    format: str


class Prediction(BaseModel):
    """Minutes per trip, in the order sent."""

    minutes: list[float]
    model: ModelRef


class ModelInfo(BaseModel):
    """The served model and the figures of the run that trained it."""

    version: str | None
    format: str
    train_months: list[str] | None
    val_month: str | None
    val_rmse: float | None
    numeric: list[str]
    terms: list[str]
    fields: list[str]


class Problem(BaseModel):
    """One reason a request was refused; ``loc`` is ``["body", index, field]`` as far as it applies."""

    loc: list[str | int]
    msg: str
    type: str


class Problems(BaseModel):
    detail: list[Problem]


def request_schema(max_batch: int) -> dict[str, Any]:
    """The body's JSON schema, inline (no ``$defs``: OpenAPI keeps its own components)."""
    return {"type": "array", "minItems": 1, "maxItems": max_batch, "items": Trip.model_json_schema()}


def pickup_field(taxi: str) -> str:
    """The pickup time's name in a month file of ``taxi``: ``tpep_pickup_datetime`` (yellow), ``lpep_pickup_datetime`` (green)."""
    return f"{'l' if taxi == 'green' else 't'}pep_pickup_datetime"


def request_fields(spec: FeatureSpec, taxi: str) -> tuple[str, ...]:
    """The members a trip must carry for a model: the zones, its numeric and binned columns, the pickup time if a term uses it."""
    return tuple(pickup_field(taxi) if c == PICKUP else c for c in input_columns(spec))


class TripParser:
    """Validates a body for one model's columns and turns it into the arrays ``predict_codes`` takes."""

    def __init__(self, spec: FeatureSpec, max_batch: int, taxi: str = "yellow", pickup: bool = False) -> None:
        self.spec = spec
        self.numeric = spec.numeric
        timed = pickup or PICKUP in input_columns(spec)  # a model whose own design needs the pickup time (xgboost) says so
        self.pickup = pickup_field(taxi) if timed else None
        self.fields = tuple(c for c in request_fields(spec, taxi) if c != self.pickup) + ((self.pickup,) if self.pickup else ())
        self.binned = tuple(dict.fromkeys(c for f in spec.factors for c in f.columns))
        extra = tuple(c for c in self.fields if c not in (PU, DO, self.pickup))
        fields: dict[str, Any] = {PU: ZoneId, DO: ZoneId, **dict.fromkeys(extra, Number)}
        if self.pickup is not None:
            fields[self.pickup] = datetime
        # The functional form takes any column name; members not declared are ignored, as Model.predict ignores them.
        trip = cast(Any, TypedDict)("Trip", fields)
        batch: Any = Annotated[list[trip], Field(min_length=1, max_length=max_batch)]  # type: ignore[valid-type]  # built at run time
        self._adapter: TypeAdapter[list[dict[str, Any]]] = TypeAdapter(batch, config=ConfigDict(strict=True))

    def parse(self, body: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Zone codes (-1: unknown), the numeric matrix, the factor levels and the pickup times (µs of their wall clock;
        None unless the model asks for them) of the trips in ``body``; ValidationError if it is not valid."""
        trips = self._adapter.validate_json(body)
        n = len(trips)
        pu = _codes(list(map(itemgetter(PU), trips)), n)
        do = _codes(list(map(itemgetter(DO), trips)), n)
        x = np.column_stack([self._column(trips, name) for name in self.numeric]) if self.numeric else np.empty((n, 0))
        times = None
        if self.pickup is not None:  # the wall clock as given: TLC times are local and naive
            stamps = [t.replace(tzinfo=None) for t in map(itemgetter(self.pickup), trips)]
            times = np.array(stamps, dtype="datetime64[us]").view(np.int64)
        if not self.spec.factors:
            return pu, do, x, np.empty((n, 0), dtype=np.int64), times
        columns: dict[str, Any] = {name: self._column(trips, name) for name in self.binned}
        if times is not None:
            columns[PICKUP] = pa.array(times.view("datetime64[us]"), pa.timestamp("us"))
        return pu, do, x, factor_codes(pa.table(columns), self.spec), times

    @staticmethod
    def _column(trips: list[dict[str, Any]], name: str) -> np.ndarray:
        return np.array([0.0 if v is None else v for v in map(itemgetter(name), trips)], dtype=np.float64)


def _codes(ids: list[int | None], n: int) -> np.ndarray:
    """Zone codes as the model's ``zone_codes`` makes them; ids of any size are compared in Python, so none overflows."""
    return np.fromiter((-1 if v is None or not 0 < v < N_ZONES else v for v in ids), dtype=np.int64, count=n)


def problems(error: ValidationError) -> list[dict[str, Any]]:
    """A ValidationError as FastAPI words it (``loc`` starts with ``"body"``), for the first :data:`MAX_PROBLEMS` problems.

    The input is echoed only if it is short and valid JSON: a whole body (a batch
    too long, bytes that do not parse) or an infinity is not.
    """
    out = []
    for item in error.errors(include_url=False)[:MAX_PROBLEMS]:
        problem: dict[str, Any] = {"type": item["type"], "loc": ["body", *item["loc"]], "msg": item["msg"]}
        if item["loc"]:
            echo = _echo(item.get("input"))
            if echo is not None:
                problem["input"] = echo
        context = _echo(item.get("ctx"))
        if context is not None:
            problem["ctx"] = context
        out.append(problem)
    return out


def _echo(value: Any) -> Any:
    """``value`` if it is short JSON with no infinities (which Starlette refuses to encode), else None."""
    if value is None:
        return None
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value if len(text) <= MAX_ECHO else None


def finite(minutes: np.ndarray) -> int | None:
    """The index of the first prediction that is not a finite number (huge inputs overflow), or None."""
    bad = np.flatnonzero(~np.isfinite(minutes))
    return int(bad[0]) if bad.size else None
