"""The year with CV, as a user runs it: opt-in (``--bench-year`` or ``BENCH_YEAR=1``), minutes long.

12 generated months (train on 11, validate on the 12th) of ``--bench-rows``
rows each (default 3.2M, about a 2023 yellow month), 5-fold × 4-alpha CV,
statistics cache off, as a command of its own and on the local stack of
``taxi-pipeline up``. Two ratios: the whole command (a subprocess, start-up
included) over its flow time (``metrics.json`` ``seconds``), and that flow time
over Arrow decoding the 12 months' 4 needed columns on the same cores (Arrow's
default threads, as the cluster's workers have them all). Best of two runs.
And the statistics cache at the scale issue 12 measured it: the year's flow into an
empty cache (cold) against the same with every chunk in it (warm).
"""

from __future__ import annotations

import pytest

from benchmarks.common import best_of, decode, month_path, months, train_command
from benchmarks.conftest import YEAR_MONTHS

pytestmark = [pytest.mark.slow, pytest.mark.year]

#: The issue's goals, reported beside the figures (not asserted: they hold on the local stack, not for a command of its own).
GOAL_WHOLE_OVER_FLOW, GOAL_FLOW_OVER_DECODE = 2, 4
#: At most: what was measured (docs/explanation/benchmarks.md) plus a margin for the shared machine.
WHOLE_OVER_FLOW, FLOW_OVER_DECODE = 6, 10


@pytest.mark.parametrize("where", ["own", "stack"])
def test_year_with_cv_vs_its_flow_and_the_decode(where, benchmark, year, command_environment, request, tmp_path_factory):
    """``own``: the command starts its own Prefect API and LocalCluster; ``stack``: it runs on ``taxi-pipeline up``'s."""
    env = command_environment if where == "own" else request.getfixturevalue("stack_environment")
    *train, val = months(YEAR_MONTHS)
    flags = ("--folds", "5", "--alphas", "0.01,0.1,1,10", "--no-cache")
    runs: list[tuple[float, float]] = []

    def run() -> None:
        seconds, metrics = train_command(year.folder, train, val, tmp_path_factory.mktemp("run"), env, *flags)
        runs.append((seconds, metrics["seconds"]))

    best_of(run, rounds=2, benchmark=benchmark)
    seconds, flow_seconds = min(runs)
    decode_seconds, rows = best_of(lambda: sum(decode(month_path(year.folder, m)).num_rows for m in months(YEAR_MONTHS)), rounds=3)
    whole_over_flow, flow_over_decode = seconds / flow_seconds, flow_seconds / decode_seconds
    benchmark.extra_info.update(
        rows=rows,
        seconds=seconds,
        flow_seconds=flow_seconds,
        decode_seconds=decode_seconds,
        whole_over_flow=whole_over_flow,
        flow_over_decode=flow_over_decode,
        headline=(
            f"the year with CV ({rows / 1e6:.1f}M rows, {'its own API and cluster' if where == 'own' else 'on the local stack'}): "
            f"whole command {whole_over_flow:.2f}x its flow (goal {GOAL_WHOLE_OVER_FLOW}x), "
            f"flow {flow_over_decode:.1f}x the decode (goal {GOAL_FLOW_OVER_DECODE}x)"
        ),
    )
    assert whole_over_flow <= WHOLE_OVER_FLOW
    assert flow_over_decode <= FLOW_OVER_DECODE


#: Issue 12 measured the cache at this scale (a warm year slower than a cold one, 7.1 vs 6.3 s) and set a warm run
#: at least 3x faster than a cold one. At most: warm flow over cold, a margin above what was measured.
GOAL_WARM_SPEEDUP, WARM_OVER_COLD = 3, 0.6


@pytest.mark.parametrize("where", ["own", "stack"])
def test_year_with_every_chunk_cached_vs_cold(where, benchmark, year, command_environment, request, tmp_path_factory):
    """The year with CV into an empty statistics cache (cold), then again with every chunk in it (warm); ``where`` as above."""
    env = command_environment if where == "own" else request.getfixturevalue("stack_environment")
    *train, val = months(YEAR_MONTHS)
    flags = ("--folds", "5", "--alphas", "0.01,0.1,1,10")
    cold_runs: list[float] = []
    for _ in range(2):  # each into a cache of its own: both cold
        cache = tmp_path_factory.mktemp("stats-cache")
        _, metrics = train_command(year.folder, train, val, tmp_path_factory.mktemp("cold"), env, *flags, "--stats-cache", str(cache))
        cold_runs.append(metrics["seconds"])
    warm_runs: list[float] = []

    def warm() -> None:
        _, metrics = train_command(year.folder, train, val, tmp_path_factory.mktemp("warm"), env, *flags, "--stats-cache", str(cache))
        warm_runs.append(metrics["seconds"])

    best_of(warm, rounds=2, benchmark=benchmark)
    cold, warmest = min(cold_runs), min(warm_runs)
    benchmark.extra_info.update(
        rows=YEAR_MONTHS * year.rows,
        cold_seconds=cold,
        warm_seconds=warmest,
        warm_speedup=cold / warmest,
        headline=f"the year with every chunk cached vs cold ({'its own API and cluster' if where == 'own' else 'on the local stack'}): "
        f"{cold / warmest:.1f}x, "
        f"goal {GOAL_WARM_SPEEDUP}x ({warmest:.2f} vs {cold:.2f} s)",
    )
    assert warmest <= WARM_OVER_COLD * cold
