"""One typed settings object, built at the entry point and passed down to the flow."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipeline.features import FeatureSpec
from pipeline.months import Month, parse_months
from pipeline.schema import TAXI_TYPES
from pipeline.sources import DEFAULT_SOURCE


class TrainConfig(BaseModel):
    """Everything a training run needs; months are ``YYYY-MM`` strings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = DEFAULT_SOURCE
    taxi: str = "yellow"
    train_months: list[str]
    val_month: str
    output: Path
    alpha: float = Field(default=1e-3, gt=0, description="ridge penalty; small = plain least squares")
    numeric: list[str] = Field(default_factory=list, description="numeric columns added as features")
    chunk_rows: int = Field(default=2_000_000, ge=1, description="rows per task, rounded to row groups")
    cache_dir: Path | None = None

    def months(self) -> tuple[list[Month], Month]:
        """Parsed training months and validation month."""
        return [Month.parse(m) for m in self.train_months], Month.parse(self.val_month)

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(numeric=tuple(self.numeric))

    @classmethod
    def from_flags(cls, train_months: str, val_month: str, **kwargs: object) -> TrainConfig:
        """Build from CLI-style month specs; a bad flag is a one-line PipelineError."""
        from pipeline.errors import PipelineError

        train = [str(m) for m in parse_months(train_months, flag="train-months")]
        val = parse_months(val_month, flag="val-month")
        if len(val) != 1:
            raise PipelineError(f"--val-month {val_month!r}: give exactly one month")
        taxi = kwargs.get("taxi", "yellow")
        if taxi not in TAXI_TYPES:
            raise PipelineError(f"--taxi {taxi!r}: expected one of {', '.join(TAXI_TYPES)}")
        return cls(train_months=train, val_month=str(val[0]), **kwargs)  # type: ignore[arg-type]
