"""The boosted-trees challenger's science: its design frame, its parameters, and the model that predicts from it.

XGBoost learns what the linear model cannot: distance is not linear in minutes
(and real ``trip_distance`` has outliers a tree puts in its end bin), and time of
day interacts with zones. The design is five columns computed from a normalised
chunk: pickup and dropoff zones as pandas categories with the fixed categories
1..265 (so every partition, on every worker, agrees on the codes; an unknown zone
is missing), ``trip_distance`` (null stays missing, not 0), and the pickup's hour
and day of week. Rows kept are exactly the linear path's
(:func:`pipeline.core.features.training_rows`), and predictions are clipped to the
training window (1..60 minutes by default): trees cannot extrapolate far, but a
model trained on that window should never answer outside it.

Pure: no Prefect, no Dask. XGBoost is imported only where a booster is trained or
used, so importing this module (as :mod:`pipeline.core.model` does) costs nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.features import MICROS_PER_DAY, FeatureSpec, training_rows, zone_codes
from pipeline.core.schema import DO, PICKUP, PU
from pipeline.errors import PipelineError

DISTANCE = "trip_distance"
HOUR = "pickup_hour"
WEEKDAY = "pickup_weekday"
#: The design's columns, in the order the booster sees them.
FEATURES: tuple[str, ...] = (PU, DO, DISTANCE, HOUR, WEEKDAY)
#: The target column of a training partition (minutes), beside the features.
TARGET = "minutes"
#: Zone ids as categories: the same 265 categories in every partition and at prediction time.
ZONES = pd.CategoricalDtype(categories=np.arange(1, 266, dtype=np.int64), ordered=False)
#: The spec a boosted model reads: the linear path's window and ``trip_distance`` (the pickup time is always read).
SPEC = FeatureSpec(numeric=(DISTANCE,))
#: The design as feature terms (:mod:`pipeline.core.terms`), for metrics.json and the run's table.
TERMS = ("PULocationID", "DOLocationID", DISTANCE, "hour", "weekday")
MICROS_PER_HOUR = 3_600_000_000
#: 1970-01-01 was a Thursday: day 0 is weekday 3 (Monday is 0).
_EPOCH_WEEKDAY = 3


@dataclass(frozen=True)
class BoostedParams:
    """XGBoost's training parameters; ``rounds`` trees of depth ``max_depth`` at learning rate ``eta``.

    Defaults measured on the real green months (docs/how-to/boosted.md): at ``eta`` 0.1 and depth 8 the validation
    RMSE is lowest near 100 rounds (99 on 2021-01 -> 02, 119 on 2021-01+02 -> 03) and worse by 400, the data README's
    reference configuration (5.273 there, 5.224 at 100): more rounds over-fit and cost 4 times the time.
    """

    rounds: int = 100
    max_depth: int = 8
    eta: float = 0.1
    max_bin: int = 256
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.max_depth < 1 or not 0 < self.eta <= 1 or self.max_bin < 2:
            raise PipelineError(f"xgboost parameters out of range: {self}")

    def xgb_params(self) -> dict[str, Any]:
        """The ``params`` of ``xgboost.train`` and ``xgboost.dask.train`` alike (``rounds`` is ``num_boost_round``)."""
        return {
            "objective": "reg:squarederror",
            "eval_metric": "rmse",
            "tree_method": "hist",
            "max_depth": self.max_depth,
            "eta": self.eta,
            "max_bin": self.max_bin,
            "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda,
            "seed": self.seed,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoostedParams:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def _micros(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None]:
    """A timestamp[us] column as int64 microseconds (0 where null) and where it is present (None: everywhere)."""
    valid = None if column.null_count == 0 else pc.is_valid(column).to_numpy(zero_copy_only=False)
    values = pc.fill_null(column.cast(pa.int64()), 0) if column.null_count else column.cast(pa.int64())
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64), valid


def _zone_codes(ids: np.ndarray) -> np.ndarray:
    """Zone ids as category codes: 1..265 -> 0..264, anything else -> -1 (missing)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where((ids >= 1) & (ids <= 265), ids - 1, -1)


def design(
    pu: np.ndarray, do: np.ndarray, distance: np.ndarray, pickup: np.ndarray, pickup_valid: np.ndarray | None = None
) -> pd.DataFrame:
    """The booster's input from zone codes (-1: unknown), distance (NaN: missing) and pickup time in µs since the epoch.

    Hour and weekday come from the timestamp's wall clock (TLC times are local, naive);
    a missing pickup (``pickup_valid`` False) leaves both missing.
    """
    pickup = np.asarray(pickup, dtype=np.int64)
    hour = (pickup // MICROS_PER_HOUR % 24).astype(np.float32)
    weekday = ((pickup // MICROS_PER_DAY + _EPOCH_WEEKDAY) % 7).astype(np.float32)
    if pickup_valid is not None:
        hour[~pickup_valid] = np.nan
        weekday[~pickup_valid] = np.nan
    return pd.DataFrame(
        {
            PU: pd.Categorical.from_codes(_zone_codes(pu), dtype=ZONES),
            DO: pd.Categorical.from_codes(_zone_codes(do), dtype=ZONES),
            DISTANCE: np.asarray(distance, dtype=np.float32),
            HOUR: hour,
            WEEKDAY: weekday,
        }
    )


def _distance(table: pa.Table) -> np.ndarray:
    """``trip_distance`` as float64, null as NaN (a tree treats it as missing, not as 0 miles)."""
    return np.asarray(table.column(DISTANCE).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


@dataclass(frozen=True)
class Rows:
    """A chunk's kept rows as the booster sees them: design, minutes, and positions in the month file (for folds)."""

    design: pd.DataFrame
    minutes: np.ndarray
    position: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.minutes.shape[0])

    def frame(self) -> pd.DataFrame:
        """Design and target in one frame: one partition of the training collection."""
        return self.design.assign(**{TARGET: self.minutes})

    def select(self, mask: np.ndarray) -> Rows:
        return Rows(self.design[mask].reset_index(drop=True), self.minutes[mask], self.position[mask])


def kept_rows(table: pa.Table, spec: FeatureSpec = SPEC, offset: int = 0) -> Rows:
    """The rows of a normalised chunk that training keeps (the linear path's filter), as design and minutes.

    ``position`` counts from ``offset`` (the chunk's first row in its month file), as
    :func:`pipeline.core.features.encode` counts it, so folds agree with the linear CV row for row.
    """
    rows = training_rows(table, spec)
    keep = np.flatnonzero(rows.keep)
    pickup, _ = _micros(table.column(PICKUP))
    frame = design(rows.pu[keep], rows.do[keep], _distance(table)[keep], pickup[keep])
    return Rows(frame, rows.micros[keep] / 60_000_000, keep.astype(np.int64) + offset)


def table_design(table: pa.Table) -> pd.DataFrame:
    """Every row of a normalised table as the booster's input (scoring: kept or not)."""
    pickup, valid = _micros(table.column(PICKUP))
    return design(zone_codes(table.column(PU)), zone_codes(table.column(DO)), _distance(table), pickup, valid)


#: Names a pickup time may carry in rows given to :meth:`BoostedModel.predict` (the month files' and the canonical one).
PICKUP_NAMES = (PICKUP, f"lpep_{PICKUP}", f"tpep_{PICKUP}")


def pickup_field(taxi: object) -> str:
    """The pickup time's name in the month files of ``taxi`` (green ``lpep_``, yellow ``tpep_``; else the canonical name):
    what the service asks each trip to carry.

    >>> pickup_field("green")
    'lpep_pickup_datetime'
    """
    prefix = {"green": "lpep_", "yellow": "tpep_"}.get(taxi if isinstance(taxi, str) else "", "")
    return f"{prefix}{PICKUP}"


def _canonical(frame: pd.DataFrame | pa.Table) -> pa.Table:
    """TLC-shaped rows as a table with canonical names: the pickup time under any of :data:`PICKUP_NAMES`."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    found = next((name for name in PICKUP_NAMES if name in table.column_names), None)
    missing = [c for c in (PU, DO, DISTANCE) if c not in table.column_names] + ([] if found else [PICKUP_NAMES[1]])
    if missing:
        raise PipelineError(f"predict: missing column(s) {', '.join(missing)}")
    pickup = table.column(found)
    if not pa.types.is_timestamp(pickup.type):
        pickup = pc.cast(pickup, pa.timestamp("us"))
    return pa.table({PICKUP: pickup.cast(pa.timestamp("us")), PU: table.column(PU), DO: table.column(DO), DISTANCE: table.column(DISTANCE)})


def predict_booster(booster: Any, frame: pd.DataFrame, spec: FeatureSpec = SPEC) -> np.ndarray:
    """The booster's minutes for a design frame, clipped to the training window ``[min_minutes, max_minutes]``."""
    raw = booster.inplace_predict(frame) if len(frame) else np.empty(0)
    return np.clip(np.asarray(raw, dtype=np.float64), spec.min_minutes, spec.max_minutes)


@dataclass(frozen=True)
class BoostedModel:
    """A trained XGBoost booster over :data:`FEATURES`; predictions are minutes clipped to the training window.

    Saved as XGBoost's own UBJSON (``model.ubj``) beside ``model.json`` by
    :mod:`pipeline.edge.model_files`, never pickled.
    """

    kind: ClassVar[str] = "xgboost"
    #: Whether ``predict_codes`` needs each trip's pickup time (the service asks for it).
    needs_pickup: ClassVar[bool] = True

    booster: Any  # xgboost.Booster: imported lazily
    spec: FeatureSpec = SPEC
    params: BoostedParams = field(default_factory=BoostedParams)
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """Predicted minutes for TLC-shaped rows: zones, ``trip_distance`` and the pickup time (canonical or ``lpep_``/``tpep_`` name)."""
        return predict_booster(self.booster, table_design(_canonical(frame)), self.spec)

    def predict_table(self, table: pa.Table) -> np.ndarray:
        """Predicted minutes for every row of a normalised chunk (canonical names, as the reader gives them)."""
        return predict_booster(self.booster, table_design(table), self.spec)

    def predict_codes(
        self, pu: np.ndarray, do: np.ndarray, x: np.ndarray, levels: np.ndarray | None = None, pickup: np.ndarray | None = None
    ) -> np.ndarray:
        """Predicted minutes from zone codes (-1: unknown), the numeric matrix (``trip_distance``) and pickup µs since the
        epoch (``levels``, of linear terms, are not used)."""
        if pickup is None:
            raise PipelineError("an xgboost model needs each trip's pickup time")
        return predict_booster(self.booster, design(pu, do, x[:, 0], pickup), self.spec)


def train_local(frame: pd.DataFrame, minutes: np.ndarray, params: BoostedParams, nthread: int = 0) -> Any:
    """Single-process ``xgboost.train`` on a design frame: the reference the distributed fit is checked against."""
    import xgboost

    data = xgboost.QuantileDMatrix(frame, minutes, enable_categorical=True, max_bin=params.max_bin, nthread=nthread)
    return xgboost.train({**params.xgb_params(), "nthread": nthread}, data, num_boost_round=params.rounds)


def rmse(predicted: np.ndarray, minutes: np.ndarray) -> float:
    """Root mean squared error in minutes (NaN with no rows)."""
    if not minutes.size:
        return float("nan")
    error = predicted - minutes
    return float(np.sqrt(error @ error / error.size))
