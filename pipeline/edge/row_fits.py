"""Row-fitted estimators end to end on one worker: gather the rows, fit, score.

These read month files (through :func:`pipeline.edge.chunks.load_rows`) and
import scikit-learn, so the flows import this module only inside the tasks
that fit estimators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.core import estimators
from pipeline.core.cv import CVScore
from pipeline.core.features import MICROS_PER_MINUTE, FeatureSpec, factor_codes, numeric_matrix, training_rows
from pipeline.core.model import AnyModel
from pipeline.core.training import Outcome, empty_of
from pipeline.edge.chunks import READ_ROWS, load_rows
from pipeline.edge.model_files import dump_estimator
from pipeline.edge.reader import MonthPlan, inspect, label, plan, read


def fold_score(
    plans: Sequence[MonthPlan], spec: FeatureSpec, model: str, folds: int, fold: int, seed: int, max_rows: int | None
) -> CVScore:
    """One CV fold of a row-fitted estimator, reading the months here."""
    return estimators.fold_score(model, load_rows(plans, spec, folds, seed, max_rows), fold, seed)


def model_rmse(model: AnyModel, val: MonthPlan) -> float:
    """RMSE of a saved model on a month's kept rows, read here chunk by chunk (a champion that statistics cannot score).

    The month's footer is read again for the model's own columns, which may not be those of the run's plan.
    """
    layout = inspect(val.layout.path, model.spec.columns())
    sse, rows = 0.0, 0
    for chunk in plan(layout, READ_ROWS):
        table = read(layout, chunk)
        kept = training_rows(table, model.spec)
        x = numeric_matrix(table, model.spec.numeric)
        predicted = model.predict_codes(kept.pu, kept.do, x, factor_codes(table, model.spec))[kept.keep]
        error = predicted - kept.micros[kept.keep] / MICROS_PER_MINUTE
        sse, rows = sse + math.fsum(error * error), rows + int(error.size)
    return math.sqrt(sse / rows) if rows else float("nan")


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
