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

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dask
import pytest
from distributed import Client

from benchmarks.common import best_of, decode, month_path, months, train_command
from benchmarks.conftest import YEAR_MONTHS
from pipeline.core.config import DEFAULT_CANDIDATES, candidate_terms
from pipeline.core.terms import ZONE_TERMS
from pipeline.edge.ports import free_port

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


#: The goals for the richest linear spec ``retrain`` compares by default, against the zone-only spec on the same
#: year with 5 x 4 CV: flow time at most 1.5x, and every worker's peak memory under 1 GB. The time is not met: 1.33x
#: to 2.15x in five runs on a quiet but slower machine (11.6 to 14.2 s against 6.2 to 8.7 s; the zone-only flow alone
#: varies by 40% between runs), three after the kernel stopped gathering kept rows, two more after the pool stopped
#: spreading every cell (1.60x to 1.85x on the earlier machine; 1.94x to 2.61x before the chunk kernel got about 3x faster, 2.45x before the
#: in-place factor codes, the packed pool and the refilled CV folds; 3.3x before the 32-bit cell keys). The memory is:
#: 769 to 908 MB (835 to 950 before; 1,085 before the packed pool). Asserted:
#: floors against regressions, with room for a shared machine (the zone-only flow is short, so load moves the ratio
#: most: 11x at load 12).
GOAL_RICH_OVER_ZONES, RICH_OVER_ZONES = 1.5, 15
GOAL_WORKER_MB, WORKER_MB = 1000, 1100


@contextmanager
def _workers(count: int) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A ``dask scheduler`` and ``count`` one-thread workers without nannies on 127.0.0.1: each worker is one process,
    so its ``VmHWM`` is its peak memory. Fresh for each run, as ``VmHWM`` never goes down. Each worker gets the
    environment a nanny would give it (``distributed.nanny.pre-spawn-environ``: one BLAS thread, glibc trimming freed
    memory), as a user's ``dask worker`` has; without it, two workers' BLAS threads contend for the 2 cores."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    local = ("--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", str(port), *local], **quiet)
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--no-nanny", "--nthreads", "1", "--memory-limit", "0", *local]
    environ = {**os.environ, **{name: str(value) for name, value in dask.config.get("distributed.nanny.pre-spawn-environ").items()}}
    workers = [subprocess.Popen(worker, env=environ, **quiet) for _ in range(count)]
    try:
        with Client(address, timeout=120) as client:  # the run sizes its CV groups by the workers it finds
            client.wait_for_workers(count, timeout=120)
        yield address, workers
    finally:
        for process in (*workers, scheduler):
            process.terminate()
        for process in (*workers, scheduler):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a worker without a nanny may not finish closing on a busy machine
                process.kill()
                process.wait(timeout=30)


def _peak_mb(process: subprocess.Popen[bytes]) -> float:
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def test_year_richest_default_spec_vs_zone_only(benchmark, year, command_environment, tmp_path_factory):
    """The zone-only spec, then the richest spec of ``retrain``'s default candidates, each with 5 folds x 4 alphas on
    the year, on a scheduler and two one-thread workers of their own: flow time (``metrics.json``) and workers' peaks."""
    *train, val = months(YEAR_MONTHS)
    flags = ("--folds", "5", "--alphas", "0.01,0.1,1,10", "--no-cache")
    richest = ",".join(candidate_terms(DEFAULT_CANDIDATES[-1]))
    figures: dict[str, tuple[float, float]] = {}

    def run(features: str) -> None:
        with _workers(2) as (address, workers):
            output = tmp_path_factory.mktemp("run")
            run_flags = (*flags, "--scheduler", address, "--features", features)
            _, metrics = train_command(year.folder, train, val, output, command_environment, *run_flags)
            figures[features] = metrics["seconds"], max(_peak_mb(w) for w in workers)

    run(",".join(ZONE_TERMS))
    best_of(lambda: run(richest), rounds=1, benchmark=benchmark)
    (zones_seconds, zones_mb), (rich_seconds, rich_mb) = figures[",".join(ZONE_TERMS)], figures[richest]
    benchmark.extra_info.update(
        rows=YEAR_MONTHS * year.rows,
        zones_seconds=zones_seconds,
        rich_seconds=rich_seconds,
        rich_over_zones=rich_seconds / zones_seconds,
        zones_worker_mb=zones_mb,
        rich_worker_mb=rich_mb,
        headline=f"the year with 5x4 CV, {richest} vs zones only: {rich_seconds / zones_seconds:.2f}x the flow time "
        f"(goal {GOAL_RICH_OVER_ZONES}x; {rich_seconds:.1f} vs {zones_seconds:.1f} s), peak worker {rich_mb:,.0f} MB "
        f"(goal < {GOAL_WORKER_MB:,} MB; zones only {zones_mb:,.0f} MB)",
    )
    assert rich_seconds <= RICH_OVER_ZONES * zones_seconds
    assert rich_mb <= WORKER_MB


def test_year_xgboost_dask_on_every_row(benchmark, year, command_environment, tmp_path_factory):
    """``--model xgboost`` (``xgboost.dask``, 100 rounds) on the 11 training months' every row, over a scheduler and
    two one-thread workers of its own: the time to train the year, rows per second per core and the workers' peak,
    beside the zone-only linear model on the same rows, which the boosted model must beat. About 25 minutes on 2 cores."""
    *train, val = months(YEAR_MONTHS)
    figures: dict[str, tuple[float, float, float]] = {}

    def run(name: str, *flags: str) -> None:
        with _workers(2) as (address, workers):
            output = tmp_path_factory.mktemp(name)
            _, metrics = train_command(year.folder, train, val, output, command_environment, "--folds", "0", "--scheduler", address, *flags)
            figures[name] = metrics["seconds"], metrics["val_rmse"], max(_peak_mb(w) for w in workers)

    run("zones", "--no-cache", "--alphas", "0.1")
    best_of(lambda: run("xgboost", "--model", "xgboost"), rounds=1, benchmark=benchmark)
    (seconds, rmse, mb), (_, zones_rmse, _) = figures["xgboost"], figures["zones"]
    rows = (YEAR_MONTHS - 1) * year.rows
    benchmark.extra_info.update(
        rows=rows,
        seconds=seconds,
        rows_per_second_per_core=rows / seconds / 2,
        val_rmse=rmse,
        zones_val_rmse=zones_rmse,
        worker_mb=mb,
        headline=f"xgboost.dask on the year's {rows / 1e6:.1f}M training rows, 2 workers: {seconds:.0f} s "
        f"({rows / seconds / 2 / 1e3:,.0f}k rows/s per core), val RMSE {rmse:.4f} (zones-only linear {zones_rmse:.4f}), "
        f"peak worker {mb:,.0f} MB",
    )
    assert rmse < zones_rmse
