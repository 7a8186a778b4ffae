"""MkDocs hook: the Benchmarks page, rendered at build time from a pytest-benchmark JSON.

``docs/benchmarks/latest.json`` is the JSON a run of ``pytest benchmarks --benchmark-json``
writes (``make bench`` writes ``.benchmarks/latest.json``); ``docs/benchmarks/run.json`` says
how and where it was run (machine, load, scale, command, and any benchmark that failed its
floor: pytest-benchmark's JSON does not say). The page's ``<!-- benchmarks -->`` marker becomes the machine, the
scale, a table of every benchmark's headline (its ``extra_info["headline"]``) and a chart of
the speed-ups the benchmarks record (``extra_info["speedup"]``), drawn with matplotlib as SVG.
Nothing on the page is copied by hand: a new JSON is a new page.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

PAGE = "explanation/benchmarks.md"
CHART = "explanation/benchmarks-speedups.svg"
MARKER = "<!-- benchmarks -->"
DATA = Path(__file__).resolve().parent.parent / "benchmarks"


def _load() -> tuple[dict[str, Any], dict[str, Any]]:
    return json.loads((DATA / "latest.json").read_text()), json.loads((DATA / "run.json").read_text())


def _label(bench: dict[str, Any]) -> str:
    """``test_a_warm_flow_is_faster_than_a_cold_one[own]`` -> ``a warm flow is faster than a cold one [own]``."""
    name = bench["name"].removeprefix("test_").replace("_", " ")
    return name.replace("[", " [")


def _speedups(report: dict[str, Any]) -> list[tuple[str, float]]:
    found = []
    for bench in report["benchmarks"]:
        value = bench.get("extra_info", {}).get("speedup")
        if isinstance(value, (int, float)):
            found.append((_label(bench), float(value)))
    return found


def _chart(report: dict[str, Any]) -> str:
    """A horizontal bar chart of the recorded speed-ups, log scale, as SVG text (deterministic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "taxi-pipeline"
    matplotlib.rcParams["svg.fonttype"] = "none"
    speedups = _speedups(report)
    figure, axes = plt.subplots(figsize=(9, 0.45 * max(len(speedups), 1) + 1.3))
    names = [name for name, _ in speedups]
    values = [value for _, value in speedups]
    bars = axes.barh(names, values, color="#3f51b5")
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlim(min([0.5, *values]) / 1.5, max([10.0, *values]) * 6)  # room for the labels right of the bars
    axes.axvline(1.0, color="#888888", linewidth=1, linestyle="--")
    axes.set_xlabel("speed-up over the benchmark's reference (×, log scale)")
    for bar, value in zip(bars, values):
        axes.text(bar.get_width() * 1.05, bar.get_y() + bar.get_height() / 2, f"{value:,.1f}×", va="center", fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    out = io.StringIO()
    figure.savefig(out, format="svg", metadata={"Date": None})
    plt.close(figure)
    return out.getvalue()


def _figures(extra: dict[str, Any], most: int = 4) -> str:
    """A benchmark without a headline: its first few recorded numbers, as ``name value``."""
    shown = []
    for key, value in extra.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        number = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        shown.append(f"{key.replace('_', ' ')} {number}")
        if len(shown) == most:
            break
    return "; ".join(shown)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(report: dict[str, Any], run: dict[str, Any]) -> str:
    machine = report.get("machine_info", {})
    cpu = machine.get("cpu", {})
    lines = [
        f"Measured on {run['machine']} ({cpu.get('brand_raw', 'unknown CPU')}, {cpu.get('count', '?')} cores as Python sees them; "
        f"Python {machine.get('python_version', '?')}), {run['conditions']}, on {report.get('datetime', '?')[:10]}.",
        "",
        f"Scale: {run['scale']}. Command: `{run['command']}`.",
        "",
        *(["Failed its floor in this run:", ""] if run.get("failed") else []),
        *[f"- {_label({'name': name})}: {why}." for name, why in run.get("failed", {}).items()],
        "",
        "![Speed-ups recorded by the benchmarks](benchmarks-speedups.svg)",
        "",
        "| benchmark | headline | time of the timed call (median) |",
        "| --- | --- | ---: |",
    ]
    for bench in report["benchmarks"]:
        extra = bench.get("extra_info", {})
        headline = extra.get("headline") or _figures(extra)
        median = bench.get("stats", {}).get("median")
        shown = f"{median:.3f} s" if isinstance(median, (int, float)) else ""
        lines.append(f"| {_label(bench)} | {_cell(headline)} | {shown} |")
    return "\n".join(lines) + "\n"


def on_files(files: Files, config: Any) -> Files:
    report, _ = _load()
    files.append(File.generated(config, CHART, content=_chart(report)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    report, run = _load()
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} lacks the marker {MARKER} where the generated figures go")
    return markdown.replace(MARKER, _markdown(report, run))
