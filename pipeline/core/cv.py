"""Cross-validation from statistics: every fold × alpha is one small solve, no second pass.

K-fold: rows carry a fold id (a hash of their position), statistics are kept per
fold, and fold k trains on ``total - fold_k``. Time: month-wise rolling origin,
training on the months before and scoring on the next.

Candidates: feature sets compared in the same CV (e.g. the seed's one-hots alone,
and with ``trip_distance``). Statistics of the largest set contain those of every
subset (:func:`pipeline.core.training.project`), so every candidate ×
alpha × fold comes from the same single read. A score's ``features`` is None
when a run compares no candidates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pipeline.core import solve
from pipeline.core.stats import Part, Stats, combine
from pipeline.core.terms import ZONE_TERMS

Features = tuple[str, ...]


@dataclass(frozen=True)
class CVScore:
    """One fold at one alpha (``None`` for models without one), of one candidate feature set."""

    fold: int
    alpha: float | None
    rmse: float
    train_rows: int
    test_rows: int
    seconds: float
    features: Features | None = None


@dataclass(frozen=True)
class AlphaSummary:
    """An alpha's (and candidate's) CV RMSE over folds."""

    alpha: float | None
    mean_rmse: float
    std_rmse: float
    folds: int
    features: Features | None = None


def score(
    train: Stats | solve.Prepared,
    test: Stats | solve.Prepared,
    fold: int,
    alpha: float,
    features: Features | None = None,
    zones: Sequence[str] = ZONE_TERMS,
) -> CVScore:
    """Solve on ``train`` at ``alpha`` (with the zone terms ``zones``) and score on ``test``."""
    started = time.perf_counter()
    weights = solve.solve(train, alpha, zones)
    rmse = solve.rmse(weights, test)
    return CVScore(fold, alpha, rmse, train.rows, test.rows, time.perf_counter() - started, features)


def kfold_score(pooled: Stats, fold: int, alpha: float, zones: Sequence[str] = ZONE_TERMS) -> CVScore:
    """Fold ``fold`` of per-fold statistics, trained on the other folds."""
    return score(pooled.without(fold), pooled.fold(fold), fold, alpha, zones=zones)


def window_score(earlier: Sequence[Part], month: Stats, fold: int, alpha: float, zones: Sequence[str] = ZONE_TERMS) -> CVScore:
    """Rolling origin: train on ``earlier`` months, score on ``month``."""
    return score(combine(earlier), month, fold, alpha, zones=zones)


def _order(features: Features | None, alpha: float | None) -> tuple[int, Features, float]:
    return (-1 if features is None else len(features), features or (), -1.0 if alpha is None else alpha)


def summarize(scores: Sequence[CVScore]) -> list[AlphaSummary]:
    """Mean and (population) standard deviation of RMSE per candidate and alpha, in that order.

    Summed with ``math.fsum`` in fold order, so the figures are correctly rounded
    and identical however the scores were gathered from the workers.
    """
    out = []
    for features, alpha in sorted({(s.features, s.alpha) for s in scores}, key=lambda key: _order(*key)):
        rmses = [s.rmse for s in sorted(scores, key=lambda s: s.fold) if s.alpha == alpha and s.features == features]
        mean = math.fsum(rmses) / len(rmses)
        std = math.sqrt(math.fsum((r - mean) ** 2 for r in rmses) / len(rmses))
        out.append(AlphaSummary(alpha, mean, std, len(rmses), features))
    return out


def best(summaries: Sequence[AlphaSummary]) -> AlphaSummary:
    """The lowest mean CV RMSE; on a tie the smaller feature set, then the smaller alpha."""
    return min(summaries, key=lambda s: (s.mean_rmse, *_order(s.features, s.alpha)))


def best_alpha(summaries: Sequence[AlphaSummary]) -> float:
    """The alpha with the lowest mean CV RMSE (the smaller alpha on a tie)."""
    return best(summaries).alpha or 0.0


def _without_none_features(record: dict[str, Any]) -> dict[str, Any]:
    if record.get("features", 0) is None:
        record.pop("features")
    elif "features" in record:
        record["features"] = list(record["features"])
    return record


@dataclass(frozen=True)
class CVReport:
    """A cross-validation's every fold × alpha (× candidate) score, and the choice made from them."""

    kind: Literal["kfold", "time"]
    scores: tuple[CVScore, ...]
    chosen_alpha: float | None
    chosen_features: Features | None = None

    @classmethod
    def of(
        cls, kind: Literal["kfold", "time"], scores: Sequence[CVScore], chosen_alpha: float | None, chosen_features: Features | None = None
    ) -> CVReport:
        """Scores kept in (candidate, alpha, fold) order, whatever order the workers returned them in."""
        ordered = sorted(scores, key=lambda s: (*_order(s.features, s.alpha), s.fold))
        return cls(kind, tuple(ordered), chosen_alpha, chosen_features)

    @property
    def folds(self) -> int:
        return len({s.fold for s in self.scores})

    @property
    def by_alpha(self) -> list[AlphaSummary]:
        return summarize(self.scores)

    @property
    def chose(self) -> bool:
        """Whether there was a choice: more than one alpha or candidate was scored."""
        return len({(s.features, s.alpha) for s in self.scores}) > 1

    @property
    def compares_features(self) -> bool:
        return any(s.features is not None for s in self.scores)

    def to_dict(self) -> dict[str, Any]:
        """The ``cv`` section of ``metrics.json`` (``features`` keys only when candidates were compared)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "folds": self.folds,
            "chosen_alpha": self.chosen_alpha,
            "by_alpha": [_without_none_features(asdict(s)) for s in self.by_alpha],
            "scores": [_without_none_features(asdict(s)) for s in self.scores],
        }
        if self.chosen_features is not None:
            out["chosen_features"] = list(self.chosen_features)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CVReport:
        def score_of(record: dict[str, Any]) -> CVScore:
            features = record.get("features")
            return CVScore(**{**record, "features": None if features is None else tuple(features)})

        chosen = data.get("chosen_features")
        return cls(
            data["kind"], tuple(score_of(s) for s in data["scores"]), data["chosen_alpha"], None if chosen is None else tuple(chosen)
        )
