"""Trained duration models and their prediction on TLC-shaped rows.

Two kinds: :class:`Model`, linear weights over pair codes (files ``model.npz`` +
``model.json``), and :class:`EstimatorModel`, a fitted scikit-learn pipeline of
:mod:`pipeline.core.estimators` (files ``model.skops`` + ``model.json``). Both are
written and read, without pickle, by :mod:`pipeline.edge.model_files`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.core.boosted import BoostedModel
from pipeline.core.features import N_ZONES, FeatureSpec, clip_to_window, factor_codes, numeric_matrix, zone_codes
from pipeline.core.schema import DO, PICKUP, PU
from pipeline.core.solve import Weights
from pipeline.errors import PipelineError

#: Row length of :attr:`Model.lookup`: the zone codes and one for unknown.
_STRIDE = N_ZONES + 1


def input_columns(spec: FeatureSpec) -> tuple[str, ...]:
    """The columns a model predicts from: the zones, its numeric and binned columns, and the pickup time if a term uses it."""
    binned = [c for f in spec.factors for c in f.columns]
    timed = any(f.timed for f in spec.factors)
    return tuple(dict.fromkeys([PU, DO, *spec.numeric, *binned, *([PICKUP] if timed else [])]))


def _codes(frame: pd.DataFrame | pa.Table, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Zone codes (-1: null or not 1..265), the numeric matrix and the factor levels of TLC-shaped (canonical) rows."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    if PICKUP not in table.column_names:  # a month file's own name for it (tpep_ yellow, lpep_ green)
        named = [c for c in table.column_names if c.endswith(f"pep_{PICKUP}")]
        if named:
            table = table.rename_columns([PICKUP if c == named[0] else c for c in table.column_names])
    missing = [c for c in input_columns(spec) if c not in table.column_names]
    if missing:
        raise PipelineError(f"predict: missing column(s) {', '.join(missing)}")
    pu, do = zone_codes(table.column(PU)), zone_codes(table.column(DO))
    return pu, do, numeric_matrix(table, spec.numeric), factor_codes(table, spec)


@dataclass(frozen=True)
class Model:
    """A trained linear duration model; ``predict`` takes TLC-shaped rows."""

    #: Which kind of model this is, for callers holding either (see :data:`AnyModel`).
    kind: ClassVar[str] = "linear"

    weights: Weights
    spec: FeatureSpec
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """Predicted minutes for each row, within the training window; zones or pairs unseen in training add 0.

        Needs the columns of :func:`input_columns` (canonical names: the pickup time is ``pickup_datetime``).
        """
        return self.predict_codes(*_codes(frame, self.spec))

    def predict_codes(
        self, pu: np.ndarray, do: np.ndarray, x: np.ndarray, levels: np.ndarray | None = None, pickup: np.ndarray | None = None
    ) -> np.ndarray:
        """Predicted minutes from zone codes (-1: unknown), the numeric matrix and factor levels (rows × factors).

        One gather from :attr:`lookup`, plus the numeric and level terms; clipped to the
        duration window the model was trained on (a linear term extrapolates, a trip does not).
        """
        index = np.where(pu >= 0, pu, N_ZONES) * _STRIDE
        index += np.where(do >= 0, do, N_ZONES)
        out = self.lookup[index]
        if self.spec.numeric:
            out += x @ self.weights.numeric
        if self.spec.factors:
            if levels is None:
                raise PipelineError("predict: the model's terms need factor levels")
            for j in range(levels.shape[1]):
                out += self.weights.levels[levels[:, j]]
        return clip_to_window(out, self.spec)

    @cached_property
    def lookup(self) -> np.ndarray:
        """Every code pair's one-hot prediction, flat ``(Z+1)²``; code ``Z`` is an unknown zone, which adds nothing.

        Summed in the order a row's terms were (intercept, pickup, dropoff, pair), so a
        gather from it gives the same bits; one 570 kB table instead of four gathers.
        """
        w = self.weights
        pu, do = np.append(w.pu, 0.0), np.append(w.do, 0.0)
        pair = np.zeros((_STRIDE, _STRIDE))
        pair[:N_ZONES, :N_ZONES] = w.pair.reshape(N_ZONES, N_ZONES)
        return np.asarray((w.intercept + pu[:, None] + do[None, :] + pair).ravel())


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

    def predict_codes(
        self, pu: np.ndarray, do: np.ndarray, x: np.ndarray, levels: np.ndarray | None = None, pickup: np.ndarray | None = None
    ) -> np.ndarray:
        """Predicted minutes from zone codes (-1: unknown) and the numeric matrix, through the estimators' design, clipped
        to the training window."""
        design = np.column_stack([pu, do, x]).astype(np.float64)
        return clip_to_window(np.asarray(self.fitted.predict(design), dtype=np.float64), self.spec)


#: Any kind of model; ``kind`` tells them apart. The boosted kind (:mod:`pipeline.core.boosted`) also needs each
#: row's pickup time (``needs_pickup``), which callers pass as ``predict_codes(..., pickup=)``.
AnyModel: TypeAlias = Model | EstimatorModel | BoostedModel
