"""What a training run hands back: one typed result, and its ``metrics.json`` form.

``metrics.json`` carries ``schema_version``; a change of meaning or a removed
field bumps it (fields may be added within a version). The reference page
docs/reference/metrics-json.md documents every field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.core.cv import CVReport
from pipeline.core.months import Month
from pipeline.core.screening import MonthRows
from pipeline.core.terms import ZONE_TERMS

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DataInput:
    """A month file a run trained or validated on, by identity: which data made a model (lineage).

    ``identity`` changes when the content does (size and mtime of a local file, the
    ETag of a remote one); ``stats_keys`` name the statistics cache entries of its chunks.
    """

    role: str  # "train" or "validation"
    month: str
    location: str
    size: int
    identity: str
    stats_keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stats_keys": list(self.stats_keys)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataInput:
        return cls(**{**data, "stats_keys": tuple(data.get("stats_keys", ()))})


@dataclass(frozen=True)
class RunResult:
    """A finished training run: months, rows, RMSEs (minutes), timing and its CV, if any."""

    model: str
    taxi: str
    train_months: tuple[Month, ...]
    val_month: Month
    alpha: float | None  # None for models without one
    numeric: tuple[str, ...]  # the model's numeric feature columns (beside the zone one-hots)
    train_rows: int
    val_rows: int
    train_rmse: float
    val_rmse: float
    seconds: float
    flow_run_id: str
    cv: CVReport | None = None
    champion_val_rmse: float | None = None  # a retraining run's champion, scored on the same validation month
    months: tuple[MonthRows, ...] = ()  # rows read and dropped per month (training months, then validation), when counted
    features: tuple[str, ...] = ()  # the model's terms (:mod:`pipeline.core.terms`); empty: the zones and ``numeric``
    inputs: tuple[DataInput, ...] = ()  # the files trained and validated on

    @property
    def terms(self) -> tuple[str, ...]:
        """The model's terms, however the result was made."""
        return self.features or (*ZONE_TERMS, *self.numeric)

    @property
    def rows_per_second(self) -> float:
        """Training and validation rows (after the duration filter) per second of flow time."""
        return (self.train_rows + self.val_rows) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` document."""
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "train_months": [str(m) for m in self.train_months],
            "val_month": str(self.val_month),
            "taxi": self.taxi,
            "alpha": self.alpha,
            "numeric": list(self.numeric),
            "train_rows": self.train_rows,
            "val_rows": self.val_rows,
            "train_rmse": self.train_rmse,
            "val_rmse": self.val_rmse,
            "seconds": self.seconds,
            "rows_per_second": self.rows_per_second,
            "flow_run_id": self.flow_run_id,
        }
        if self.features:
            out["features"] = list(self.features)
        if self.cv is not None:
            out["cv"] = self.cv.to_dict()
        if self.champion_val_rmse is not None:
            out["champion_val_rmse"] = self.champion_val_rmse
        if self.months:
            out["months"] = [m.to_dict() for m in self.months]
        if self.inputs:
            out["inputs"] = [i.to_dict() for i in self.inputs]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """Read a ``metrics.json`` document of this schema version."""
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"metrics schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
        return cls(
            model=data["model"],
            taxi=data["taxi"],
            train_months=tuple(Month.parse(m) for m in data["train_months"]),
            val_month=Month.parse(data["val_month"]),
            alpha=data["alpha"],
            numeric=tuple(data["numeric"]),
            train_rows=data["train_rows"],
            val_rows=data["val_rows"],
            train_rmse=data["train_rmse"],
            val_rmse=data["val_rmse"],
            seconds=data["seconds"],
            flow_run_id=data["flow_run_id"],
            cv=CVReport.from_dict(data["cv"]) if "cv" in data else None,
            champion_val_rmse=data.get("champion_val_rmse"),
            months=tuple(MonthRows.from_dict(m) for m in data.get("months", ())),
            features=tuple(data.get("features", ())),
            inputs=tuple(DataInput.from_dict(i) for i in data.get("inputs", ())),
        )
