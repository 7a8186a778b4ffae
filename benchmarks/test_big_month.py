"""A 20M-row month: every chunk task's peak memory is bounded by its chunk, not by the month (issue 13, limits).

Opt-in (``--bench-big-month`` or ``BENCH_BIG_MONTH=1``): generating the month
takes minutes and 3 GB of memory once (it is reused from ``.benchmarks/data``).
The month has TLC-like 500k-row groups and is planned as a run plans it
(``TrainConfig`` default ``chunk_rows``); each chunk's statistics with 5 folds
are computed in a fresh process whose peak RSS is read
(:mod:`benchmarks.chunk_memory`), beside one row group alone: peaks grow with the
chunk's rows, at most linearly, and the month's size does not enter.
"""

from __future__ import annotations

import pytest

from benchmarks.chunk_memory import CLEAR_REFS, probe_peaks
from benchmarks.common import SPEC, TAXI, months
from benchmarks.conftest import BIG_MONTH_ROWS
from pipeline.core.config import DEFAULT_CHUNK_ROWS
from pipeline.edge import reader
from pipeline.edge.sources import month_filename
from pipeline.edge.synth import write_months

pytestmark = [pytest.mark.slow, pytest.mark.big_month]

GROUP_ROWS = 500_000
#: Issue 12's bound on a worker's peak for the year; a chunk task must stay under it whatever the month's size.
PEAK_BOUND = 1 << 30
#: At most this growth over linear from one row group to a whole chunk (1.0 is linear).
GROWTH = 1.1


def test_every_chunk_of_a_20m_row_month_peaks_by_its_chunk(benchmark, pytestconfig):
    if not CLEAR_REFS.exists():
        pytest.fail("the peak probe needs Linux's /proc/self/clear_refs")
    folder = pytestconfig.rootpath / ".benchmarks" / "data" / f"big-{BIG_MONTH_ROWS}"
    (month,) = months(1)
    if not (folder / month_filename(TAXI, month)).is_file():
        write_months(folder, [month], BIG_MONTH_ROWS, seed=0, taxi=TAXI, row_group_size=GROUP_ROWS)
    chunk_rows = DEFAULT_CHUNK_ROWS
    plan = reader.locate(str(folder), TAXI, month, SPEC.columns())
    chunks = reader.plan(plan.layout, chunk_rows)
    arguments = {index: [str(folder), str(month), str(chunk_rows), str(index), "5"] for index in range(len(chunks))}
    arguments[-1] = [str(folder), str(month), str(GROUP_ROWS), "0", "5"]  # one row group: the per-row baseline
    peaks = benchmark.pedantic(probe_peaks, args=("benchmarks.chunk_memory", arguments, pytestconfig.rootpath), rounds=1)
    group = peaks.pop(-1)
    per_row = {index: probe["peak_bytes"] / probe["rows"] for index, probe in peaks.items()}
    worst = max(peaks.values(), key=lambda probe: probe["peak_bytes"])
    growth = max(per_row.values()) / (group["peak_bytes"] / group["rows"])
    benchmark.extra_info.update(
        month_rows=plan.layout.rows,
        chunks=len(chunks),
        chunk_rows=[probe["rows"] for probe in peaks.values()],
        peak_bytes=[probe["peak_bytes"] for probe in peaks.values()],
        row_group_peak_bytes=group["peak_bytes"],
        growth_over_linear=growth,
        headline=(
            f"a {plan.layout.rows / 1e6:.0f}M-row month in {len(chunks)} chunk tasks (5 folds): peak "
            f"{worst['peak_bytes'] / 2**20:.0f} MB at most ({worst['peak_bytes'] / worst['rows']:.0f} bytes a row; "
            f"one row group {group['peak_bytes'] / group['rows']:.0f}), bound {PEAK_BOUND / 2**30:.0f} GB"
        ),
    )
    assert plan.layout.rows == BIG_MONTH_ROWS and len(chunks) == BIG_MONTH_ROWS // chunk_rows
    assert all(probe["peak_bytes"] <= PEAK_BOUND for probe in peaks.values())
    assert growth <= GROWTH
