"""Cross-validation from statistics: every fold × alpha is one small solve, no second pass.

K-fold: rows carry a fold id (a hash of their position), statistics are kept per
fold, and fold k trains on ``total - fold_k``. Time: month-wise rolling origin,
training on the months before and scoring on the next.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import reduce
from operator import add

import numpy as np

from pipeline.core import solve
from pipeline.core.stats import Stats


@dataclass(frozen=True)
class CVScore:
    """One fold at one alpha (``None`` for models without one)."""

    fold: int
    alpha: float | None
    rmse: float
    train_rows: int
    test_rows: int
    seconds: float


@dataclass(frozen=True)
class AlphaSummary:
    """An alpha's CV RMSE over folds."""

    alpha: float | None
    mean_rmse: float
    std_rmse: float
    folds: int


def score(train: Stats, test: Stats, fold: int, alpha: float) -> CVScore:
    """Solve on ``train`` at ``alpha`` and score on ``test``."""
    started = time.perf_counter()
    weights = solve.solve(train, alpha)
    rmse = solve.rmse(weights, test)
    return CVScore(fold, alpha, rmse, train.rows, test.rows, time.perf_counter() - started)


def kfold_score(pooled: Stats, fold: int, alpha: float) -> CVScore:
    """Fold ``fold`` of per-fold statistics, trained on the other folds."""
    return score(pooled.without(fold), pooled.fold(fold), fold, alpha)


def window_score(earlier: Sequence[Stats], month: Stats, fold: int, alpha: float) -> CVScore:
    """Rolling origin: train on ``earlier`` months, score on ``month``."""
    return score(reduce(add, earlier), month, fold, alpha)


def summarize(scores: Sequence[CVScore]) -> list[AlphaSummary]:
    """Mean and standard deviation of RMSE per alpha, in alpha order."""
    out = []
    for alpha in sorted({s.alpha for s in scores}, key=lambda a: -1.0 if a is None else a):
        rmses = np.array([s.rmse for s in scores if s.alpha == alpha])
        out.append(AlphaSummary(alpha, float(rmses.mean()), float(rmses.std()), int(rmses.size)))
    return out


def best_alpha(summaries: Sequence[AlphaSummary]) -> float:
    """The alpha with the lowest mean CV RMSE (the smaller alpha on a tie)."""
    return min(summaries, key=lambda s: (s.mean_rmse, s.alpha or 0.0)).alpha or 0.0


def alpha_text(alpha: float | None) -> str:
    """An alpha for tables; models without one show a dash."""
    return "-" if alpha is None else f"{alpha:g}"


def report(kind: str, scores: Sequence[CVScore], chosen: float | None) -> dict[str, object]:
    """The ``cv`` section of ``metrics.json``."""
    return {
        "kind": kind,
        "folds": len({s.fold for s in scores}),
        "chosen_alpha": chosen,
        "by_alpha": [asdict(s) for s in summarize(scores)],
        "scores": [asdict(s) for s in sorted(scores, key=lambda s: (s.alpha or 0.0, s.fold))],
    }
