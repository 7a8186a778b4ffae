"""The monitoring report's files: ``report.md``, ``report.png`` and ``report.json``, each written atomically.

matplotlib draws on its Agg canvas (no display, no pyplot state) and is imported
only when a report is written, or by :func:`prepare` ahead of it: importing it and
loading its font cost ~0.5 s, which a scoring flow spends while its chunks are scored.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

from pipeline.core.monitoring import MonthReport
from pipeline.edge import storage
from pipeline.edge.storage import Where

REPORT_MD, REPORT_PNG, REPORT_JSON = "report.md", "report.png", "report.json"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def prepare() -> None:
    """Import matplotlib and load its font now (a scoring flow runs this in a thread beside its tasks)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1))
    figure.text(0.5, 0.5, "0")
    FigureCanvasAgg(figure).draw()


def chart(months: Sequence[MonthReport], train_rmse: float, max_psi: float, max_rmse_ratio: float) -> bytes:
    """Two panels: RMSE per month against the training RMSE, and PSI per month against the threshold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [m.month for m in months]
    fig = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(labels, [m.rmse for m in months], marker="o", label="RMSE of the scored month")
    top.axhline(train_rmse, color="grey", linestyle="--", label=f"training RMSE {train_rmse:.3f}")
    top.axhline(train_rmse * max_rmse_ratio, color="red", linestyle=":", label=f"alarm: {max_rmse_ratio:g}× training")
    top.set(ylabel="RMSE (minutes)", title="Error per month")
    top.legend(fontsize=8)
    width = 0.25
    positions = range(len(months))
    for offset, (name, values) in enumerate(
        (
            ("pickup zones", [m.psi_pickup for m in months]),
            ("dropoff zones", [m.psi_dropoff for m in months]),
            ("pairs", [m.psi_pair for m in months]),
        )
    ):
        bottom.bar([p + (offset - 1) * width for p in positions], [v if math.isfinite(v) else 0 for v in values], width, label=name)
    bottom.axhline(max_psi, color="red", linestyle=":", label=f"alarm: PSI {max_psi:g}")
    if all(not math.isfinite(m.psi_pair) for m in months):
        bottom.text(0.5, 0.5, "not measured: the model has no training counts", transform=bottom.transAxes, ha="center", color="grey")
    bottom.set(ylabel="PSI vs training months", title="Drift of the trip mix", xticks=list(positions), xticklabels=labels)
    bottom.legend(fontsize=8)
    # fixed margins: tight_layout would lay out every label an extra time, a third of the chart's cost
    fig.subplots_adjust(left=0.1, right=0.98, top=0.95, bottom=0.06, hspace=0.22)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def write_report(
    output: Where,
    markdown: str,
    months: Sequence[MonthReport],
    summary: dict[str, Any],
    train_rmse: float,
    max_psi: float,
    max_rmse_ratio: float,
) -> bytes:
    """Write the chart, then the markdown that shows it, then ``report.json`` (last: its presence means a whole report).

    The chart's PNG bytes are returned, for a report that has to carry its chart inside (the Prefect UI's artifact)."""
    folder = storage.locate(output)
    png = chart(months, train_rmse, max_psi, max_rmse_ratio)
    storage.put(folder.child(REPORT_PNG), png)
    storage.put(folder.child(REPORT_MD), markdown.encode())
    document = {
        **summary,
        "breaches": sum(len(m.breaches) for m in months),
        "months": [{k: _finite(v) if isinstance(v, float) else v for k, v in m.to_dict().items()} for m in months],
    }
    storage.put(folder.child(REPORT_JSON), json.dumps(document, indent=2, sort_keys=True).encode())
    return png
