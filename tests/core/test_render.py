"""RunResult's metrics.json form, CVReport summaries, and the one place that formats them for people."""

from __future__ import annotations

import json
import math
import random

import pytest

from pipeline.core import render
from pipeline.core.cv import CVReport, CVScore
from pipeline.core.months import Month, parse_months
from pipeline.core.results import RunResult


def _scores(rmses: dict[float | None, list[float]]) -> list[CVScore]:
    """One CVScore per alpha and fold, fold k scoring ``rmses[alpha][k]``."""
    return [
        CVScore(fold, alpha, rmse, 900 + fold, 100 + fold, 0.25 * (fold + 1))
        for alpha, folds in rmses.items()
        for fold, rmse in enumerate(folds)
    ]


def _result(cv: CVReport | None = None, seconds: float = 3.0, alpha: float | None = 0.1) -> RunResult:
    return RunResult(
        model="linear",
        taxi="yellow",
        train_months=tuple(parse_months("2023-01:2023-02")),
        val_month=Month(2023, 3),
        alpha=alpha,
        numeric=("trip_distance",),
        train_rows=1_000_000,
        val_rows=234_567,
        train_rmse=5.123456,
        val_rmse=6.5,
        seconds=seconds,
        flow_run_id="0b5e3f3e-1111-2222-3333-444455556666",
        cv=cv,
    )


#: Three folds; alpha 0.1 has mean 4.5 and population std sqrt(1/6).
GRID = CVReport.of("kfold", _scores({1.0: [5.0, 5.5, 6.0], 0.1: [4.0, 4.5, 5.0]}), 0.1)


# --- metrics.json -------------------------------------------------------------------------------


@pytest.mark.parametrize("cv", [None, GRID], ids=["no-cv", "cv"])
def test_to_dict_round_trips(cv: CVReport | None) -> None:
    result = _result(cv)
    document = result.to_dict()
    assert document["schema_version"] == 1
    assert document["train_months"] == ["2023-01", "2023-02"] and document["val_month"] == "2023-03"
    assert document["rows_per_second"] == 1_234_567 / 3.0
    assert ("cv" in document) == (cv is not None)
    assert RunResult.from_dict(document) == result
    through_json = json.loads(json.dumps(document))
    assert through_json == document
    assert RunResult.from_dict(through_json) == result


def test_cv_section_of_metrics_json() -> None:
    document = _result(GRID).to_dict()["cv"]
    assert document["kind"] == "kfold" and document["folds"] == 3 and document["chosen_alpha"] == 0.1
    assert [(a["alpha"], a["mean_rmse"], a["folds"]) for a in document["by_alpha"]] == [(0.1, 4.5, 3), (1.0, 5.5, 3)]
    assert [(s["alpha"], s["fold"]) for s in document["scores"]] == [(0.1, 0), (0.1, 1), (0.1, 2), (1.0, 0), (1.0, 1), (1.0, 2)]


def test_a_model_without_alpha_round_trips() -> None:
    cv = CVReport.of("kfold", _scores({None: [7.0, 7.25]}), None)
    result = _result(cv, alpha=None)
    document = json.loads(json.dumps(result.to_dict()))
    assert document["alpha"] is None and document["cv"]["chosen_alpha"] is None
    assert RunResult.from_dict(document) == result


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_from_dict_refuses_another_schema_version(version: object) -> None:
    document = _result(GRID).to_dict()
    document["schema_version"] = version
    with pytest.raises(ValueError, match="schema_version"):
        RunResult.from_dict(document)
    del document["schema_version"]
    with pytest.raises(ValueError, match="schema_version"):
        RunResult.from_dict(document)


# --- figures ------------------------------------------------------------------------------------


def test_candidates_add_a_features_column_and_name_the_chosen_set() -> None:
    scores = [
        CVScore(fold, 1.0, rmse, 900, 100, 0.1, features)
        for features, rmses in (((), [5.0, 5.2]), (("trip_distance",), [4.0, 4.2]))
        for fold, rmse in enumerate(rmses)
    ]
    report = CVReport.of("kfold", scores, 1.0, ("trip_distance",))
    assert render.cv_header(report) == ("features", *render.CV_HEADER)
    assert render.cv_rows(report) == [("zones", "1", "5.1000", "0.1000", "2"), ("zones + trip_distance", "1", "4.1000", "0.1000", "2")]
    assert render.cv_title(report) == "kfold CV over 2 folds; chosen zones + trip_distance at alpha 1 (lowest mean RMSE)"
    document = report.to_dict()
    assert document["chosen_features"] == ["trip_distance"] and document["scores"][0]["features"] == []
    assert CVReport.from_dict(document) == report


def test_metric_rows_format_each_figure_once() -> None:
    rows = dict(render.metric_rows(_result(seconds=3.0)))
    assert rows == {
        "train rows": "1,000,000",
        "validation rows": "234,567",
        "train RMSE (min)": "5.1235",
        "validation RMSE (min)": "6.5000",
        "alpha": "0.1",
        "features": "zones + trip_distance",
        "seconds": "3.0",
        "rows per second": "411,522",  # 1,234,567 / 3 = 411,522.33
    }


@pytest.mark.parametrize(
    ("seconds", "text", "rate"),
    [
        (12.34, "12.3", "100,046"),  # 1,234,567 / 12.34 = 100,045.95
        (0.25, "0.2", "4,938,268"),  # round-half-even of 0.25 at one decimal; the rate is exact
        (1234.56, "1234.6", "1,000"),  # 999.99
        (0.0, "0.0", "0"),  # no time measured: no rate
    ],
)
def test_seconds_one_decimal_rows_per_second_whole_with_separators(seconds: float, text: str, rate: str) -> None:
    rows = dict(render.metric_rows(_result(seconds=seconds)))
    assert rows["seconds"] == text
    assert rows["rows per second"] == rate


def test_a_model_without_alpha_shows_a_dash() -> None:
    assert dict(render.metric_rows(_result(alpha=None)))["alpha"] == "-"


# --- CV titles and tables -----------------------------------------------------------------------


def test_cv_title_with_a_choice_among_alphas() -> None:
    title = render.cv_title(GRID)
    assert title == "kfold CV over 3 folds; chosen alpha 0.1 (lowest mean RMSE)"


def test_cv_title_with_one_fold_and_one_alpha() -> None:
    report = CVReport.of("time", _scores({0.001: [4.2]}), 0.001)
    title = render.cv_title(report)
    assert title.startswith("time CV over 1 fold;")
    assert "folds" not in title and "chosen alpha" not in title
    assert "error estimate at alpha 0.001" in title and "one alpha given" in title


def test_cv_title_with_one_alpha_over_several_folds_does_not_claim_a_choice() -> None:
    report = CVReport.of("kfold", _scores({1e-5: [4.0, 4.1, 4.2]}), 1e-5)
    assert not report.chose
    assert render.cv_title(report) == "kfold CV over 3 folds; error estimate at alpha 1e-05 (one alpha given: nothing to choose)"


def test_cv_title_of_a_model_without_alpha() -> None:
    report = CVReport.of("kfold", _scores({None: [7.0, 7.5]}), None)
    assert render.cv_title(report) == "kfold CV over 2 folds"


def test_cv_rows_per_alpha() -> None:
    assert render.cv_rows(GRID) == [("0.1", "4.5000", "0.4082", "3"), ("1", "5.5000", "0.4082", "3")]


def test_cv_table_has_every_fold_and_alpha() -> None:
    table = render.cv_table(GRID)
    assert len(table) == 6
    assert table[0] == {"alpha": 0.1, "fold": 0, "rmse": 4.0, "train_rows": 900, "test_rows": 100, "seconds": 0.25}
    assert [row["rmse"] for row in table] == [4.0, 4.5, 5.0, 5.0, 5.5, 6.0]


def test_markdown_with_cv_has_its_table() -> None:
    text = render.markdown(_result(GRID))
    lines = text.splitlines()
    assert lines[0] == "### linear: trained on 2023-01, 2023-02, validated on 2023-03"
    assert "| seconds | 3.0 |" in lines and "| rows per second | 411,522 |" in lines
    assert "#### kfold CV over 3 folds; chosen alpha 0.1 (lowest mean RMSE)" in lines
    assert "| alpha | mean RMSE | std | folds |" in lines
    assert "| 0.1 | 4.5000 | 0.4082 | 3 |" in lines and "| 1 | 5.5000 | 0.4082 | 3 |" in lines
    assert lines.index("| 0.1 | 4.5000 | 0.4082 | 3 |") < lines.index("| 1 | 5.5000 | 0.4082 | 3 |")
    assert text.endswith("|\n")


def test_markdown_without_cv_has_no_cv_table() -> None:
    text = render.markdown(_result(None))
    assert "| validation RMSE (min) | 6.5000 |" in text.splitlines()
    assert "####" not in text and "mean RMSE" not in text and "CV" not in text
    # Exactly the header, the rule and the eight metric rows.
    assert sum(line.startswith("|") for line in text.splitlines()) == 2 + 8


# --- CVReport summaries are independent of gathering order ---------------------------------------


def _awkward_scores() -> list[CVScore]:
    """Fold RMSEs whose plain sum depends on order (and differs from the correctly rounded one)."""
    rng = random.Random(42)
    rmses: dict[float | None, list[float]] = {
        0.01: [rng.uniform(3.0, 9.0) for _ in range(7)],
        1.0: [1.0, 1e16, 1.0, 1.0, 3.0, 1e-3, 1.0],
        100.0: [0.1] * 7,
    }
    return _scores(rmses)


def test_by_alpha_is_identical_whatever_order_the_scores_arrive_in() -> None:
    scores = _awkward_scores()
    reference = CVReport.of("kfold", scores, 0.01)
    for seed in range(20):
        shuffled = scores[:]
        random.Random(seed).shuffle(shuffled)
        again = CVReport.of("kfold", shuffled, 0.01)
        assert again.to_dict() == reference.to_dict()
        assert again == reference
        # Even bypassing ``of``'s sort, the summaries are the same to the bit.
        assert CVReport("kfold", tuple(shuffled), 0.01).by_alpha == reference.by_alpha


def test_by_alpha_means_are_the_correctly_rounded_fold_means() -> None:
    scores = _awkward_scores()
    summaries = CVReport.of("kfold", scores, 0.01).by_alpha
    assert [s.alpha for s in summaries] == [0.01, 1.0, 100.0]
    for summary in summaries:
        rmses = [s.rmse for s in scores if s.alpha == summary.alpha]
        assert summary.folds == len(rmses) == 7
        assert summary.mean_rmse == math.fsum(rmses) / len(rmses)
    # The data can tell: a plain left-to-right sum loses the small RMSEs next to 1e16.
    awkward = [s.rmse for s in scores if s.alpha == 1.0]
    assert sum(awkward) / 7 != math.fsum(awkward) / 7
    # Seven equal RMSEs have exactly that mean and no spread.
    assert (summaries[2].mean_rmse, summaries[2].std_rmse) == (math.fsum([0.1] * 7) / 7, pytest.approx(0.0, abs=1e-17))
