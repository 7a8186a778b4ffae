"""Row-fitted estimators end to end on one worker: gather the rows, fit, score.

These read month files (through :func:`pipeline.edge.chunks.load_rows`) and
import scikit-learn, so the flows import this module only inside the tasks
that fit estimators.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core import estimators
from pipeline.core.cv import CVScore
from pipeline.core.features import FeatureSpec
from pipeline.core.model import AnyModel
from pipeline.core.training import Outcome, empty_of
from pipeline.edge.chunks import load_rows
from pipeline.edge.model_files import dump_estimator
from pipeline.edge.reader import MonthPlan, label


def fold_score(
    plans: Sequence[MonthPlan], spec: FeatureSpec, model: str, folds: int, fold: int, seed: int, max_rows: int | None
) -> CVScore:
    """One CV fold of a row-fitted estimator, reading the months here."""
    return estimators.fold_score(model, load_rows(plans, spec, folds, seed, max_rows), fold, seed)


def model_rmse(model: AnyModel, val: MonthPlan) -> float:
    """RMSE of a saved model on a month's kept rows, read here (a champion that statistics cannot score)."""
    rows = load_rows([val], model.spec, 1, 0, None)
    predicted = model.predict_codes(rows.pu, rows.do, rows.x)
    return float(np.sqrt(np.mean((predicted - rows.y) ** 2)))


@dataclass(frozen=True)
class FitResult:
    """A final fit's outcome, and the fitted estimator as ``model.skops`` bytes when it has no linear form.

    Bytes, not the fitted pipeline: they are made on the worker, cross to the
    flow process as they are (about 0.5 MB for 200 trees), and are written there
    with :func:`pipeline.edge.model_files.save_estimator_bytes` without importing
    scikit-learn or unpickling a tree.
    """

    outcome: Outcome
    estimator_bytes: bytes | None = None  # hist_gradient_boosting only; sgd's model is outcome.weights


def fit_and_validate(
    train: Sequence[MonthPlan], val: MonthPlan, spec: FeatureSpec, model: str, seed: int, max_rows: int | None
) -> FitResult:
    """Fit on all (capped) training rows and score the validation month."""
    train_rows = load_rows(train, spec, 1, seed, max_rows)
    val_rows = load_rows([val], spec, 1, seed, None)
    empty = empty_of({f"months {', '.join(str(p.file.month) for p in train)}": train_rows.rows, label(val): val_rows.rows})
    if empty:
        return FitResult(Outcome(None, train_rows.rows, float("nan"), val_rows.rows, float("nan"), empty))
    fitted = estimators.fit(model, train_rows, seed)
    outcome = Outcome(
        estimators.sgd_weights(fitted) if model == "sgd" else None,
        train_rows.rows,
        estimators.rmse(fitted, train_rows),
        val_rows.rows,
        estimators.rmse(fitted, val_rows),
    )
    return FitResult(outcome, None if model == "sgd" else dump_estimator(fitted))
