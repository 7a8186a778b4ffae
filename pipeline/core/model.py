"""Trained duration models and their prediction on TLC-shaped rows.

Two kinds: :class:`Model`, linear weights over pair codes (files ``model.npz`` +
``model.json``), and :class:`EstimatorModel`, a fitted scikit-learn pipeline of
:mod:`pipeline.core.estimators` (files ``model.skops`` + ``model.json``). Both are
written and read, without pickle, by :mod:`pipeline.edge.model_files`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.core.features import N_ZONES, FeatureSpec, numeric_matrix, zone_codes
from pipeline.core.schema import DO, PU
from pipeline.core.solve import Weights
from pipeline.errors import PipelineError


def _codes(frame: pd.DataFrame | pa.Table, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zone codes (-1: null or not 1..265) and the numeric matrix of TLC-shaped rows, as every model predicts from them."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    missing = [c for c in (PU, DO, *spec.numeric) if c not in table.column_names]
    if missing:
        raise PipelineError(f"predict: missing column(s) {', '.join(missing)}")
    return zone_codes(table.column(PU)), zone_codes(table.column(DO)), numeric_matrix(table, spec.numeric)


@dataclass(frozen=True)
class Model:
    """A trained linear duration model; ``predict`` takes TLC-shaped rows."""

    #: Which kind of model this is, for callers holding either (see :data:`AnyModel`).
    kind: ClassVar[str] = "linear"

    weights: Weights
    spec: FeatureSpec
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """Predicted minutes for each row; zones or pairs unseen in training add 0.

        Needs ``PULocationID``, ``DOLocationID`` and the model's numeric columns.
        """
        return self.predict_codes(*_codes(frame, self.spec))

    def predict_codes(self, pu: np.ndarray, do: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Predicted minutes from zone codes (-1: unknown) and the numeric matrix: a gather of weights."""
        known = (pu >= 0) & (do >= 0)
        pu0, do0 = np.where(pu >= 0, pu, 0), np.where(do >= 0, do, 0)  # a known end counts even if the other is not
        w = self.weights
        pair = np.where(known, w.pair[pu0 * N_ZONES + do0], 0.0)
        out = w.intercept + np.where(pu >= 0, w.pu[pu0], 0.0) + np.where(do >= 0, w.do[do0], 0.0) + pair
        if self.spec.numeric:
            out = out + x @ w.numeric
        return np.asarray(out)


@dataclass(frozen=True)
class EstimatorModel:
    """A row-fitted estimator (a fitted pipeline of :func:`pipeline.core.estimators.make_estimator`) as a model.

    It predicts from the same inputs as :class:`Model`, so callers need not know
    which kind they hold. Unknown zones (code -1: null, or outside 1..265) are
    the estimator's business: HistGradientBoosting puts them in its "other" category.
    """

    kind: ClassVar[str] = "estimator"

    fitted: Any  # scikit-learn ships no types
    spec: FeatureSpec
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """Predicted minutes for each row; needs ``PULocationID``, ``DOLocationID`` and the model's numeric columns."""
        return self.predict_codes(*_codes(frame, self.spec))

    def predict_codes(self, pu: np.ndarray, do: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Predicted minutes from zone codes (-1: unknown) and the numeric matrix, through the estimators' design."""
        design = np.column_stack([pu, do, x]).astype(np.float64)
        return np.asarray(self.fitted.predict(design), dtype=np.float64)


#: Either kind of model; ``kind`` tells them apart.
AnyModel: TypeAlias = Model | EstimatorModel
