"""Cross-validation from statistics: every fold × alpha is one small solve, no second pass.

K-fold: rows carry a fold id (a hash of their position), statistics are kept per
fold, and fold k trains on ``total - fold_k``. Time: month-wise rolling origin,
training on the months before and scoring on the next.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pipeline.core import solve
from pipeline.core.stats import Stats, combine


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
    return score(combine(earlier), month, fold, alpha)


def summarize(scores: Sequence[CVScore]) -> list[AlphaSummary]:
    """Mean and (population) standard deviation of RMSE per alpha, in alpha order.

    Summed with ``math.fsum`` in fold order, so the figures are correctly rounded
    and identical however the scores were gathered from the workers.
    """
    out = []
    for alpha in sorted({s.alpha for s in scores}, key=_alpha_order):
        rmses = [s.rmse for s in sorted(scores, key=lambda s: s.fold) if s.alpha == alpha]
        mean = math.fsum(rmses) / len(rmses)
        std = math.sqrt(math.fsum((r - mean) ** 2 for r in rmses) / len(rmses))
        out.append(AlphaSummary(alpha, mean, std, len(rmses)))
    return out


def _alpha_order(alpha: float | None) -> float:
    return -1.0 if alpha is None else alpha


def best_alpha(summaries: Sequence[AlphaSummary]) -> float:
    """The alpha with the lowest mean CV RMSE (the smaller alpha on a tie)."""
    return min(summaries, key=lambda s: (s.mean_rmse, s.alpha or 0.0)).alpha or 0.0


@dataclass(frozen=True)
class CVReport:
    """A cross-validation's every fold × alpha score, and the alpha chosen from them."""

    kind: Literal["kfold", "time"]
    scores: tuple[CVScore, ...]
    chosen_alpha: float | None

    @classmethod
    def of(cls, kind: Literal["kfold", "time"], scores: Sequence[CVScore], chosen_alpha: float | None) -> CVReport:
        """Scores kept in (alpha, fold) order, whatever order the workers returned them in."""
        return cls(kind, tuple(sorted(scores, key=lambda s: (_alpha_order(s.alpha), s.fold))), chosen_alpha)

    @property
    def folds(self) -> int:
        return len({s.fold for s in self.scores})

    @property
    def by_alpha(self) -> list[AlphaSummary]:
        return summarize(self.scores)

    @property
    def chose(self) -> bool:
        """Whether there was a choice: more than one alpha was scored."""
        return len({s.alpha for s in self.scores}) > 1

    def to_dict(self) -> dict[str, Any]:
        """The ``cv`` section of ``metrics.json``."""
        return {
            "kind": self.kind,
            "folds": self.folds,
            "chosen_alpha": self.chosen_alpha,
            "by_alpha": [asdict(s) for s in self.by_alpha],
            "scores": [asdict(s) for s in self.scores],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CVReport:
        return cls(data["kind"], tuple(CVScore(**s) for s in data["scores"]), data["chosen_alpha"])
