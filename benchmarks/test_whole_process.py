"""What a user waits for: ``taxi-pipeline train`` as a subprocess beside the seed path's whole process.

Both are fresh Python processes, imports and start-up included: the seed's
reads the months with pandas and fits DictVectorizer + LinearRegression
(:mod:`benchmarks.seed_process`); the project's is the command a user types,
starting its own Prefect API and LocalCluster, with CV off (``--folds 0``, the
seed has none) and the statistics cache off (every month read). Train on two
months, validate on the third: 3 × 1M rows at the default scale, best of two
commands (the first also creates the session's Prefect database); one in
quick mode. The command's ``metrics.json`` gives its flow time beside the whole.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.common import best_of, months, seed_process, train_command
from benchmarks.conftest import QUICK_ROWS

pytestmark = [pytest.mark.slow, pytest.mark.reference]

#: The issue's goal, reported beside the figure (not asserted: the start-up is being cut elsewhere).
GOAL = 15


def test_whole_command_vs_seed_process(benchmark, bench, command_environment, tmp_path_factory):
    *train, val = months(3)
    env = command_environment
    seed_seconds, reference = seed_process(bench.folder, train, val, env)
    runs: list[tuple[float, dict[str, Any]]] = []

    def run() -> None:
        output = tmp_path_factory.mktemp("run")
        runs.append(train_command(bench.folder, train, val, output, env, "--folds", "0", "--no-cache"))

    best_of(run, rounds=1 if bench.rows <= QUICK_ROWS else 2, benchmark=benchmark)  # CI: one run, as budgeted
    seconds, metrics = min(runs, key=lambda r: r[0])
    assert (metrics["train_rows"], metrics["val_rows"]) == (reference["train_rows"], reference["val_rows"])
    assert metrics["val_rmse"] == pytest.approx(reference["val_rmse"], rel=1e-3)
    speedup = seed_seconds / seconds
    benchmark.extra_info.update(
        rows=3 * bench.rows,
        seconds=seconds,
        flow_seconds=metrics["seconds"],
        seed_seconds=seed_seconds,
        speedup=speedup,
        val_rmse=metrics["val_rmse"],
        seed_val_rmse=reference["val_rmse"],
        headline=f"whole command vs the seed's whole process: {speedup:.1f}x ({seconds:.1f} vs {seed_seconds:.1f} s; goal {GOAL}x)",
    )
    assert speedup >= bench.floors.whole_process_speedup
