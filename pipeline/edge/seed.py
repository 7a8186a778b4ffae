"""The path users run today, kept as the reference: pandas + DictVectorizer + LinearRegression.

It follows the seed article line for line (duration filter 1..60 minutes,
``PULocationID``, ``DOLocationID`` and ``PU_DO`` as strings, ``to_dict`` records),
with ``root_mean_squared_error`` where scikit-learn 1.9 removed ``squared=False``.
Tests and benchmarks hold the exact path to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LinearRegression
from sklearn.metrics import root_mean_squared_error

CATEGORICAL = ["PULocationID", "DOLocationID", "PU_DO"]


def read_dataframe(path: Path) -> pd.DataFrame:
    """The seed's ``prepare_features``: duration, filter, string categoricals."""
    df = pd.read_parquet(path)
    pickup = "tpep_pickup_datetime" if "tpep_pickup_datetime" in df else "lpep_pickup_datetime"
    dropoff = pickup.replace("pickup", "dropoff")
    df["duration"] = (df[dropoff] - df[pickup]).dt.total_seconds() / 60
    df = df[(df.duration >= 1) & (df.duration <= 60)].copy()
    df["PU_DO"] = df["PULocationID"].astype(str) + "_" + df["DOLocationID"].astype(str)
    df[CATEGORICAL] = df[CATEGORICAL].fillna(-1).astype("str")
    return df


@dataclass(frozen=True)
class SeedResult:
    train_rows: int
    val_rows: int
    train_rmse: float
    val_rmse: float


def train_and_validate(train: pd.DataFrame, val: pd.DataFrame) -> SeedResult:
    """Fit on ``train`` and score on ``val`` exactly as the seed does."""
    dv = DictVectorizer()
    x_train = dv.fit_transform(train[CATEGORICAL].to_dict(orient="records"))
    model = LinearRegression().fit(x_train, train["duration"].values)
    x_val = dv.transform(val[CATEGORICAL].to_dict(orient="records"))
    return SeedResult(
        train_rows=len(train),
        val_rows=len(val),
        train_rmse=float(root_mean_squared_error(train["duration"].values, model.predict(x_train))),
        val_rmse=float(root_mean_squared_error(val["duration"].values, model.predict(x_val))),
    )
