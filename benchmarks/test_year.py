"""The year with CV, as a user runs it: opt-in (``--bench-year`` or ``BENCH_YEAR=1``), minutes long.

12 generated months (train on 11, validate on the 12th) of ``--bench-rows``
rows each (default 3.2M, about a 2023 yellow month), 5-fold × 4-alpha CV,
statistics cache off, as a command of its own and on the local stack of
``taxi-pipeline up``. Two ratios: the whole command (a subprocess, start-up
included) over its flow time (``metrics.json`` ``seconds``), and that flow time
over Arrow decoding the 12 months' 4 needed columns on the same cores (Arrow's
default threads, as the cluster's workers have them all). Best of two runs.
"""

from __future__ import annotations

import pytest

from benchmarks.common import best_of, decode, month_path, months, train_command
from benchmarks.conftest import YEAR_MONTHS

pytestmark = [pytest.mark.slow, pytest.mark.year]

#: The issue's goals, reported beside the figures (not asserted: they hold on the local stack, not for a command of its own).
GOAL_WHOLE_OVER_FLOW, GOAL_FLOW_OVER_DECODE = 2, 4
#: At most: what was measured (README "Benchmarks") plus a margin for the shared machine.
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
