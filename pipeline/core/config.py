"""One typed settings object, built at the entry point and passed down to the flow."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import PipelineError
from pipeline.core.features import FeatureSpec
from pipeline.core.months import Month, parse_months
from pipeline.core.schema import TAXI_TYPES
from pipeline.edge.sources import DEFAULT_SOURCE


#: ``linear`` trains exactly from statistics; the others fit on rows, fold by fold.
MODELS = ("linear", "hist_gradient_boosting", "sgd")


class TrainConfig(BaseModel):
    """Everything a training run needs; months are ``YYYY-MM`` strings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = DEFAULT_SOURCE
    taxi: str = "yellow"
    train_months: list[str]
    val_month: str
    output: Path
    alphas: list[float] = Field(default=[1e-3], min_length=1, description="ridge penalties; CV picks the best")
    folds: int = Field(default=5, ge=0, description="K-fold CV over training rows; 0 turns CV off")
    cv: Literal["kfold", "time"] = "kfold"
    seed: int = Field(default=0, ge=0, description="drives fold assignment and estimators")
    model: str = "linear"
    max_rows: int | None = Field(default=None, ge=1, description="row cap per fit for estimators other than linear")
    numeric: list[str] = Field(default_factory=list, description="numeric columns added as features")
    chunk_rows: int = Field(default=4_000_000, ge=1, description="rows per task, rounded to row groups")
    cache_dir: Path | None = None
    cache: bool = Field(default=True, description="reuse chunk statistics of unchanged month files")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if any(a <= 0 for a in self.alphas):
            raise PipelineError(f"--alphas {self.alphas}: every alpha must be positive")
        if self.folds == 1:
            raise PipelineError("--folds 1: one fold cannot cross-validate; use 0 to turn CV off, or 2 and more")
        if self.cv == "time" and self.folds and len(self.train_months) < 2:
            raise PipelineError("--cv time: needs at least two --train-months (train on earlier, validate on the next)")
        if self.model not in MODELS:
            raise PipelineError(f"--model {self.model!r}: expected one of {', '.join(MODELS)}")
        if self.model != "linear" and self.cv == "time":
            raise PipelineError(f"--cv time: supported for --model linear; {self.model} cross-validates by kfold")
        if self.model != "linear" and len(self.alphas) > 1:
            raise PipelineError(f"--alphas: an alpha grid applies to --model linear, not {self.model}")
        return self

    @property
    def cross_validates(self) -> bool:
        return self.folds >= 2

    def months(self) -> tuple[list[Month], Month]:
        """Parsed training months and validation month."""
        return [Month.parse(m) for m in self.train_months], Month.parse(self.val_month)

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(numeric=tuple(self.numeric))

    @classmethod
    def from_flags(cls, train_months: str, val_month: str, **kwargs: object) -> TrainConfig:
        """Build from CLI-style month specs; a bad flag is a one-line PipelineError."""
        train = [str(m) for m in parse_months(train_months, flag="train-months")]
        val = parse_months(val_month, flag="val-month")
        if len(val) != 1:
            raise PipelineError(f"--val-month {val_month!r}: give exactly one month")
        taxi = kwargs.get("taxi", "yellow")
        if taxi not in TAXI_TYPES:
            raise PipelineError(f"--taxi {taxi!r}: expected one of {', '.join(TAXI_TYPES)}")
        return cls(train_months=train, val_month=str(val[0]), **kwargs)  # type: ignore[arg-type]
