"""A trained duration model: linear weights over pair codes, and prediction on TLC-shaped rows.

Its files (``model.npz`` + ``model.json``, no pickle) are written and read by
:mod:`pipeline.edge.model_files`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.core.features import N_ZONES, FeatureSpec, numeric_matrix, zone_codes
from pipeline.core.schema import DO, PU
from pipeline.core.solve import Weights
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Model:
    """A trained duration model; ``predict`` takes TLC-shaped rows."""

    weights: Weights
    spec: FeatureSpec
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """Predicted minutes for each row; zones or pairs unseen in training add 0.

        Needs ``PULocationID``, ``DOLocationID`` and the model's numeric columns.
        """
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        missing = [c for c in (PU, DO, *self.spec.numeric) if c not in table.column_names]
        if missing:
            raise PipelineError(f"predict: missing column(s) {', '.join(missing)}")
        x = numeric_matrix(table, self.spec.numeric)
        return self.predict_codes(zone_codes(table.column(PU)), zone_codes(table.column(DO)), x)

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
