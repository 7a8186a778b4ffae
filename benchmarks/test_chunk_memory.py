"""Memory of one chunk task against the size of its row-group range.

A worker holds a chunk's rows only while it reduces them: its peak should grow
at most linearly with the chunk's rows, and what it returns (the statistics)
should not grow at all. Chunks of a quarter, a half and all of a month (1M rows
at the default scale; the months have 4 row groups). Peaks come from
:mod:`benchmarks.chunk_memory` in fresh processes; the benchmark times the same
task in this process, on one core.
"""

from __future__ import annotations

import pytest

from benchmarks.chunk_memory import CLEAR_REFS, memory_figures, probe_peaks
from benchmarks.common import SPEC, TAXI, best_of, months
from pipeline.edge import reader
from pipeline.edge.chunks import chunk_statistics

QUARTERS = (1, 2, 4)


def _target_rows(bench, quarters: int) -> int:
    return bench.rows * quarters // 4


@pytest.fixture(scope="module")
def peaks(bench, pytestconfig) -> dict[int, dict[str, float]]:
    """Quarters of a month to the probe's figures, one fresh process each."""
    if not CLEAR_REFS.exists():
        pytest.skip("the peak probe needs Linux's /proc/self/clear_refs")
    (month,) = months(1)
    arguments = {q: [str(bench.folder), str(month), str(_target_rows(bench, q))] for q in QUARTERS}
    return probe_peaks("benchmarks.chunk_memory", arguments, pytestconfig.rootpath)


@pytest.mark.usefixtures("one_core")
@pytest.mark.parametrize("quarters", QUARTERS)
def test_chunk_memory(benchmark, bench, peaks, quarters):
    (month,) = months(1)
    plan = reader.locate(str(bench.folder), TAXI, month, SPEC.columns())
    chunk = reader.plan(plan.layout, _target_rows(bench, quarters))[0]
    seconds, _ = best_of(lambda: chunk_statistics(plan, chunk, SPEC), rounds=5, benchmark=benchmark)
    probe, smallest = peaks[quarters], peaks[min(QUARTERS)]
    figures = memory_figures(probe, smallest)
    growth = figures["growth_over_linear"]
    benchmark.extra_info.update(rows=chunk.rows, rows_per_second=chunk.rows / seconds, stats_bytes=probe["stats_bytes"], **figures)
    assert probe["rows"] == chunk.rows
    # constant but for the exact Σy², a Python int whose pickle grows a byte per 256-fold rows
    assert probe["stats_bytes"] == pytest.approx(smallest["stats_bytes"], abs=8)
    assert growth <= bench.floors.memory_growth
