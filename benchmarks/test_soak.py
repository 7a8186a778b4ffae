"""A deployment kept up (issue 22, case 7): opt-in (``--bench-soak`` or ``BENCH_SOAK=1``), ten minutes long.

``taxi-pipeline deploy --cron "* * * * *"`` serves the retraining against a ``prefect server start`` on three
generated months of ``--bench-rows`` rows (default 1M) ending last month (a scheduled run trains as of its day),
linear candidates only (``--no-boosted``), until ten runs have ended. After each run, with none in progress, the
serving process is measured: resident memory (with its descendants), open file descriptors, entries under its own
TMPDIR. Asserted: every run completed; from the second run to the last, memory grows less than ``RSS_GROWTH_MB``
and open files and temporary entries do not grow. The small version, four runs on an interval, is in ``make test``
(``tests/flows/test_retrain.py``).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from benchmarks.conftest import DEFAULT_ROWS, _rows_option
from pipeline.core.months import Month
from pipeline.edge.synth import write_months
from pipeline.runtime.testing import PrefectServer, RunSample, served_deployment

pytestmark = [pytest.mark.slow, pytest.mark.soak]

#: One run a minute for this many minutes.
RUNS = 10
#: At most this growth of the serving process's memory from the second run to the last, MB.
RSS_GROWTH_MB = 40.0


@pytest.fixture(scope="module")
def recent_months(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three months ending last month, ``--bench-rows`` rows each."""
    folder = tmp_path_factory.mktemp("recent-months")
    last = Month(date.today().year, date.today().month).previous()
    rows = _rows_option(pytestconfig) or DEFAULT_ROWS
    write_months(folder, [last.shift(-2), last.shift(-1), last], rows, seed=0, row_group_size=max(1, rows // 4))
    return folder


def _row(sample: RunSample) -> str:
    run, f = sample.flow_run, sample.footprint
    seconds = run.total_run_time.total_seconds()
    return f"{run.name:<24} {run.state.name:<10} {seconds:7.1f} {f.rss_mb:8.1f} {f.open_files:6d} {f.temp_entries:6d} {f.processes:6d}"


def test_a_deployment_served_every_minute_completes_every_run_and_does_not_grow(benchmark, recent_months, tmp_path_factory):
    from prefect.client.orchestration import SyncPrefectClient

    server = PrefectServer(tmp_path_factory.mktemp("soak-server"))
    try:
        env = {**server.env, "PREFECT_LOGGING_LEVEL": "WARNING"}
        registry = tmp_path_factory.mktemp("soak-registry") / "registry"
        args = ["--source", str(recent_months), "--registry", str(registry), "--cron", "* * * * *", "--no-boosted"]
        with served_deployment(tmp_path_factory.mktemp("soak"), "soak", args, env) as served, SyncPrefectClient(server.url) as client:

            def soak() -> list[RunSample]:
                return served.samples(client, runs=RUNS, timeout=(RUNS + 5) * 60)

            samples = benchmark.pedantic(soak, rounds=1, iterations=1)
            served.drain(client, timeout=300)
            code = served.stop()
            ended = [r for r in served.flow_runs(client) if r.state.is_final()]
    finally:
        server.close()
    print("\nflow run                 state      seconds   RSS MB  files   temp  procs")
    print("\n".join(_row(s) for s in samples))
    steady = [s.footprint for s in samples[1:]]
    growth = steady[-1].rss_mb - steady[0].rss_mb
    seconds = [r.total_run_time.total_seconds() for r in ended]
    benchmark.extra_info.update(
        runs=len(ended),
        completed=sum(r.state.is_completed() for r in ended),
        run_seconds=seconds,
        rss_mb=[s.footprint.rss_mb for s in samples],
        open_files=[s.footprint.open_files for s in samples],
        temp_entries=[s.footprint.temp_entries for s in samples],
    )
    benchmark.extra_info["headline"] = (
        f"deployment served every minute: {sum(r.state.is_completed() for r in ended)} of {len(ended)} runs completed "
        f"({min(seconds):.0f}-{max(seconds):.0f} s each); serving process from run 2 to {len(samples)}: "
        f"RSS {steady[0].rss_mb:.0f} -> {steady[-1].rss_mb:.0f} MB (bound +{RSS_GROWTH_MB:.0f}), "
        f"open files {steady[0].open_files} -> {steady[-1].open_files}, temp entries {steady[0].temp_entries} -> {steady[-1].temp_entries}"
    )
    assert code == 0 and "Traceback" not in served.output, served.output
    assert len(ended) >= RUNS and all(r.state.is_completed() for r in ended), [(r.name, r.state.name) for r in ended]
    assert growth < RSS_GROWTH_MB, steady
    assert steady[-1].open_files <= steady[0].open_files and steady[-1].temp_entries <= steady[0].temp_entries, steady
