"""The one place that spells results for people: table rows, titles and markdown.

The CLI turns :func:`metric_rows` and :func:`cv_rows` into rich tables; the
flow publishes :func:`markdown` and :func:`cv_table` as Prefect artifacts. Each
figure is formatted once, here: rows with thousands separators, RMSEs with four
decimals, seconds with one, rates as whole rows per second.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core.cv import CVReport
from pipeline.core.decisions import Decision
from pipeline.core.monitoring import MonthReport
from pipeline.core.results import RunResult
from pipeline.core.screening import MonthRows, Unusual
from pipeline.core.terms import ZONE_TERMS

CV_HEADER = ("alpha", "mean RMSE", "std", "folds")


def alpha_text(alpha: float | None) -> str:
    """An alpha for tables; models without one show a dash."""
    return "-" if alpha is None else f"{alpha:g}"


def features_text(terms: Sequence[str] | None) -> str:
    """A feature set: ``zones`` for the seed's three one-hots, then the other terms."""
    terms = tuple(terms or ())
    if not any(t in ZONE_TERMS for t in terms):  # numeric columns beside the seed's one-hots
        terms = (*ZONE_TERMS, *terms)
    if terms[: len(ZONE_TERMS)] == ZONE_TERMS:
        return " + ".join(["zones", *terms[len(ZONE_TERMS) :]])
    return " + ".join(terms)


def plural(count: int, noun: str) -> str:
    """``1 fold``, ``3 folds``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def created_text(created: str) -> str:
    """A version's creation time (ISO 8601, as the registry writes it) to the minute, in UTC: short enough to show whole.

    >>> created_text("2026-12-07T06:36:46.038+00:00")
    '2026-12-07 06:36 UTC'
    >>> created_text("")
    ''
    """
    if not created:
        return ""
    from datetime import datetime, timezone

    return datetime.fromisoformat(created).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def title(result: RunResult) -> str:
    return f"{result.model}: trained on {', '.join(map(str, result.train_months))}, validated on {result.val_month}"


def metric_rows(result: RunResult) -> list[tuple[str, str]]:
    """(metric, value) rows of the run's headline figures."""
    return [
        ("train rows", f"{result.train_rows:,}"),
        ("validation rows", f"{result.val_rows:,}"),
        ("train RMSE (min)", f"{result.train_rmse:.4f}"),
        ("validation RMSE (min)", f"{result.val_rmse:.4f}"),
        ("alpha", alpha_text(result.alpha)),
        ("features", features_text(result.terms)),
        ("seconds", f"{result.seconds:.1f}"),
        ("rows per second", f"{result.rows_per_second:,.0f}"),
    ]


MONTH_ROWS_HEADER = ("month", "rows read", "kept", "dropped", "by duration", "bad timestamps", "bad zones")


def month_rows(months: Sequence[MonthRows]) -> list[tuple[str, ...]]:
    """One row per month under :data:`MONTH_ROWS_HEADER`: what was read and why rows were dropped."""
    return [
        (
            str(m.month),
            f"{m.rows_read:,}",
            f"{m.rows_kept:,}",
            f"{m.drop_rate:.2%}",
            f"{m.dropped_by_duration:,}",
            f"{m.out_of_range_timestamps:,}",
            f"{m.out_of_range_zones:,}",
        )
        for m in months
    ]


def drop_warning(found: Unusual) -> str:
    """One line naming the month, its drop rate and the others' median, for the log and the CLI."""
    m = found.month
    return (
        f"month {m.month} dropped {m.drop_rate:.2%} of its {m.rows_read:,} rows, the other months' median {found.others_median:.2%} "
        f"({m.dropped_by_duration:,} by the duration filter, {m.out_of_range_timestamps:,} with out-of-range timestamps, "
        f"{m.out_of_range_zones:,} with out-of-range zones): a damaged file?"
    )


def cv_title(report: CVReport) -> str:
    """Says what the CV did: chose among alphas, or only estimated the error at the one alpha given."""
    what = f"{report.kind} CV over {plural(report.folds, 'fold')}"
    if report.chosen_alpha is None:
        return what
    if report.compares_features:
        return f"{what}; chosen {features_text(report.chosen_features)} at alpha {alpha_text(report.chosen_alpha)} (lowest mean RMSE)"
    if report.chose:
        return f"{what}; chosen alpha {alpha_text(report.chosen_alpha)} (lowest mean RMSE)"
    return f"{what}; error estimate at alpha {alpha_text(report.chosen_alpha)} (one alpha given: nothing to choose)"


def cv_header(report: CVReport) -> tuple[str, ...]:
    """:data:`CV_HEADER`, with a ``features`` column first when candidates were compared."""
    return ("features", *CV_HEADER) if report.compares_features else CV_HEADER


def cv_rows(report: CVReport) -> list[tuple[str, ...]]:
    """One row per alpha (and candidate) under :func:`cv_header`."""
    rows: list[tuple[str, ...]] = []
    for s in report.by_alpha:
        row = (alpha_text(s.alpha), f"{s.mean_rmse:.4f}", f"{s.std_rmse:.4f}", str(s.folds))
        rows.append((features_text(s.features), *row) if report.compares_features else row)
    return rows


def cv_table(report: CVReport) -> list[dict[str, object]]:
    """Every fold × alpha score, as rows of a Prefect table artifact."""
    return [
        {
            **({"features": features_text(s.features)} if report.compares_features else {}),
            "alpha": s.alpha,
            "fold": s.fold,
            "rmse": s.rmse,
            "train_rows": s.train_rows,
            "test_rows": s.test_rows,
            "seconds": s.seconds,
        }
        for s in report.scores
    ]


def _markdown_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"| {' | '.join('---:' for _ in header)} |", *(f"| {' | '.join(row)} |" for row in rows)]


def markdown(result: RunResult) -> str:
    """The run as markdown: its figures and, with CV, the per-alpha summary."""
    lines = [f"### {title(result)}", "", *_markdown_table(("metric", "value"), metric_rows(result))]
    if result.cv is not None:
        lines += ["", f"#### {cv_title(result.cv)}", "", *_markdown_table(cv_header(result.cv), cv_rows(result.cv))]
    if result.months:
        lines += ["", "#### Rows per month", "", *_markdown_table(MONTH_ROWS_HEADER, month_rows(result.months))]
    return "\n".join(lines) + "\n"


def decision_line(decision: Decision) -> str:
    """One line: what happened to the champion, with both RMSEs when they were compared."""
    rmses = ""
    if decision.challenger_rmse is not None:
        champion = "-" if decision.champion_rmse is None else f"{decision.champion_rmse:.4f}"
        rmses = f" (challenger {decision.challenger_rmse:.4f} vs champion {champion} min on {decision.val_month})"
    return f"{decision.action} {decision.version}{rmses}: {decision.reason}; champion now {decision.champion_after or 'none'}"


def decision_rows(decision: Decision) -> list[tuple[str, str]]:
    """(field, value) rows of a champion/challenger decision."""

    def rmse(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    return [
        ("decision", decision.action),
        ("version", decision.version),
        ("validation month", decision.val_month or "-"),
        ("challenger RMSE (min)", rmse(decision.challenger_rmse)),
        ("champion RMSE (min)", rmse(decision.champion_rmse)),
        ("champion before", decision.champion_before or "none"),
        ("champion after", decision.champion_after or "none"),
        ("why", decision.reason),
    ]


def retrain_markdown(decision: Decision, result: RunResult) -> str:
    """A retraining run: the decision, then the challenger's figures and CV."""
    lines = [f"### {decision_line(decision)}", "", *_markdown_table(("field", "value"), decision_rows(decision)), ""]
    return "\n".join(lines) + markdown(result)


MONITORING_HEADER = ("month", "rows", "in range", "RMSE", "mean error", "RMSE / train", "PSI pickup", "PSI dropoff", "PSI pair", "breaches")


def monitoring_rows(months: Sequence[MonthReport]) -> list[tuple[str, ...]]:
    """One row per scored month under :data:`MONITORING_HEADER`."""

    def figure(value: float, digits: int = 4) -> str:
        return "-" if value != value else f"{value:.{digits}f}"  # NaN: not measured

    return [
        (
            m.month,
            f"{m.rows:,}",
            f"{m.in_range:,}",
            figure(m.rmse),
            f"{m.mean_error:+.4f}" if m.mean_error == m.mean_error else "-",
            figure(m.rmse_ratio, 3),
            figure(m.psi_pickup, 3),
            figure(m.psi_dropoff, 3),
            figure(m.psi_pair, 3),
            "; ".join(m.breaches) or "none",
        )
        for m in months
    ]


def monitoring_markdown(
    title_line: str, train_rmse: float, months: Sequence[MonthReport], max_psi: float, max_rmse_ratio: float, chart: str = "report.png"
) -> str:
    """The monitoring report: per month error against the training RMSE, and drift of the trip mix.

    ``chart`` is the image's address: the file beside ``report.md``, or a ``data:`` URI where no file resolves (the Prefect UI).
    The breaches are a list, error and drift two narrow tables, so that the report fits the Prefect UI's
    artifact page (~800 px of text at a 1400 px window) with any number of breaches.
    """
    breaches = sum(len(m.breaches) for m in months)
    rows = monitoring_rows(months)
    lines = [
        f"# {title_line}",
        "",
        f"Training RMSE {train_rmse:.4f} min. Thresholds: PSI above {max_psi:g}, RMSE above {max_rmse_ratio:g}× the training RMSE.",
        f"**{breaches} breach{'es' if breaches != 1 else ''}** over {plural(len(months), 'month')}:"
        if breaches
        else f"No breach over {plural(len(months), 'month')}.",
        "",
        *([f"- {m.month}: {breach}" for m in months for breach in m.breaches] + [""] if breaches else []),
        "## Error",
        "",
        *_markdown_table(MONITORING_HEADER[:6], [row[:6] for row in rows]),
        "",
        "RMSE and mean error (predicted minus actual) are over the rows training would keep (1 to 60 minutes, known zones).",
        "",
        "## Drift of the trip mix",
        "",
        *_markdown_table(("month", "PSI pickup", "PSI dropoff", "PSI pair"), [(row[0], *row[6:9]) for row in rows]),
        "",
        "PSI compares each month's trip mix with the training months' (rare pairs pooled, so sampling noise stays below 0.02).",
        "",
        f"![RMSE and drift per month]({chart})",
    ]
    return "\n".join(lines) + "\n"


INPUTS_HEADER = ("role", "month", "file", "bytes", "identity", "statistics keys")


def input_rows(result: RunResult) -> list[tuple[str, ...]]:
    """The files a run trained and validated on (lineage), one row each; cache keys shortened to 12 hex digits."""
    return [(i.role, i.month, i.location, f"{i.size:,}", i.identity, " ".join(k[:12] for k in i.stats_keys) or "-") for i in result.inputs]
