"""The benchmarks' scale, generated months, and the floors asserted at that scale.

``pytest benchmarks`` runs them (the default ``pytest`` collects ``tests/`` only).
Scale: ``--bench-rows N`` or ``BENCH_ROWS`` rows per generated month (default 1M,
about 5 minutes on 2 cores); ``--bench-quick`` or ``BENCH_QUICK=1`` for CI
(100k rows, relaxed floors). ``--bench-year`` or ``BENCH_YEAR=1`` adds the
year-scale benchmark (12 months of ``--bench-rows``, default 3.2M), left out
otherwise; ``--bench-soak`` or ``BENCH_SOAK=1`` a deployment served every minute for
10 minutes. Months are generated once into
``.benchmarks/data/<rows>/`` and reused by later sessions: ``pipeline.edge.synth`` is
deterministic and writes atomically, so a file there is the file a new run would
write (delete the folder after changing the generator). The terminal summary
ends with each benchmark's headline ratio (``extra_info["headline"]``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from threadpoolctl import threadpool_limits

from benchmarks.common import TAXI, command_env, months, run_python
from pipeline.edge.ports import free_port
from pipeline.edge.sources import month_filename
from pipeline.edge.synth import write_months
from pipeline.runtime.testing import temporary_prefect_api

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

DEFAULT_ROWS = 1_000_000
QUICK_ROWS = 100_000
#: dask-ml's lbfgs takes 15-30 s on 100k rows a month: cap its months to stay in budget.
PEER_ROWS = 100_000
QUICK_PEER_ROWS = 20_000
#: Train on up to 4 months (the flow benchmarks) and validate on the next.
MONTHS = 5
#: A month as large as TLC's largest (2015's yellow months held 12-13M rows), and more.
BIG_MONTH_ROWS = 20_000_000
#: The year-scale benchmark: 12 months of about the rows of TLC's 2023 yellow months.
YEAR_MONTHS = 12
YEAR_ROWS = 3_200_000
#: Row groups per month: chunks of 1/4, 1/2 and all of a month for the memory benchmark.
GROUPS_PER_MONTH = 4


@dataclass(frozen=True)
class Floors:
    """Ratios asserted to catch a regression; never absolute times (the machine varies)."""

    seed_speedup: float  # project rows/s over the seed path's, same rows
    peer_speedup: float  # project rows/s over dask-ml's, same rows
    cv_speedup: float  # refitting per fold and alpha, over K-fold CV from one pass of statistics
    kernel_over_decode: float  # at most: encode + statistics time over the parquet decode time
    end_to_end_over_decode: float  # at most: parquet-to-statistics time over the decode time
    whole_process_speedup: float  # the seed path's whole process over ``taxi-pipeline train``'s, same rows
    stack_process_speedup: float  # the same, the command on the local stack (``taxi-pipeline up``)
    worker_speedup: float  # flow seconds on 1 worker over 2 workers
    memory_growth: float  # at most: peak(n)/peak(smallest) over n/smallest, i.e. 1.0 is linear


#: Measured at 1M rows a month (docs/explanation/benchmarks.md), with a margin for a noisy shared
#: machine. Parquet to statistics: issue 12's goal is 70% of the decode's throughput (1.43x its time,
#: printed beside the figure); measured 1.2 to 1.63x under load 2 to 5 (the kernel 0.3 to 0.7x), so the
#: floor is 50% (2x): the goal itself failed on noise. The whole command on the local stack: goal 15x
#: (printed), measured 20-34x, floor 10x.
#: Flows are still orchestration-bound at this size (~0.5 s of work in 1.3-2.4 s; 8-16 s
#: before task runs got cheaper) and one run each swings by half under load, so a second
#: worker shows no gain yet: its floor only catches one that makes runs several times slower
#: (as Prefect tags did: 0.29x in CI). The whole command on the local stack measured 34x.
DEFAULT_FLOORS = Floors(
    seed_speedup=50,
    peer_speedup=100,
    cv_speedup=3,
    kernel_over_decode=0.8,
    end_to_end_over_decode=2.0,
    whole_process_speedup=2,
    stack_process_speedup=10,
    worker_speedup=0.3,
    memory_growth=1.1,
)
#: At 100k rows the project's fixed costs weigh more: the solve and the 70k-pair
#: arrays (smaller seed and dask-ml ratios), the 25 solves CV pays either way (a
#: pass is then worth less than a solve), footer reads beside a smaller decode.
QUICK_FLOORS = Floors(
    seed_speedup=25,
    peer_speedup=50,
    cv_speedup=1.5,
    kernel_over_decode=0.8,
    # the footer and plan weigh more beside a 4.5 ms decode: 1.5-1.6x measured (medians), 2 CPU burners or not
    end_to_end_over_decode=2.5,
    whole_process_speedup=0.1,
    stack_process_speedup=1,
    worker_speedup=0.3,
    memory_growth=1.1,
)


@dataclass(frozen=True)
class Bench:
    """The session's scale, its generated months, and the floors asserted at that scale."""

    rows: int  # per month in ``folder``
    folder: Path  # MONTHS months of ``rows`` rows
    peer_rows: int  # per month in ``peer_folder``
    peer_folder: Path  # two months, for dask-ml and the project beside it
    floors: Floors


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("taxi-pipeline benchmarks")
    group.addoption("--bench-rows", type=int, default=None, help=f"rows per generated month (env BENCH_ROWS; default {DEFAULT_ROWS:,})")
    group.addoption(
        "--bench-quick",
        action="store_true",
        default=None,
        help=f"CI scale, {QUICK_ROWS:,} rows a month and relaxed floors (env BENCH_QUICK=1)",
    )
    group.addoption(
        "--bench-big-month",
        action="store_true",
        default=None,
        help=f"also one month of {BIG_MONTH_ROWS:,} rows, every chunk task's peak memory (env BENCH_BIG_MONTH=1)",
    )
    group.addoption(
        "--bench-soak",
        action="store_true",
        default=None,
        help="also a deployment served every minute for 10 minutes on 3 months of --bench-rows (env BENCH_SOAK=1)",
    )
    group.addoption(
        "--bench-year",
        action="store_true",
        default=None,
        help=f"also the year: {YEAR_MONTHS} months of --bench-rows (default {YEAR_ROWS:,}) with CV (env BENCH_YEAR=1)",
    )


def _flag(config: pytest.Config, option: str, variable: str) -> bool:
    """An opt-in from the command line or, failing that, the environment."""
    return bool(config.getoption(option) or os.environ.get(variable, "") not in ("", "0"))


def _rows_option(config: pytest.Config) -> int:
    """``--bench-rows``, else ``BENCH_ROWS``, else 0 (unset)."""
    return int(config.getoption("bench_rows") or os.environ.get("BENCH_ROWS") or 0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reference: also runs another implementation (seed path, dask-ml) on the same rows")
    config.addinivalue_line("markers", "year: the year-scale benchmark, run only with --bench-year or BENCH_YEAR=1")
    config.addinivalue_line("markers", "soak: a deployment served every minute for 10 minutes, run only with --bench-soak or BENCH_SOAK=1")
    config.addinivalue_line("markers", "big_month: the 20M-row month's memory, run only with --bench-big-month or BENCH_BIG_MONTH=1")


#: Benchmarks left out unless asked for (marker: option, environment variable): they generate GBs and run for minutes.
OPT_IN = {
    "year": ("bench_year", "BENCH_YEAR"),
    "big_month": ("bench_big_month", "BENCH_BIG_MONTH"),
    "soak": ("bench_soak", "BENCH_SOAK"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) the opt-in benchmarks nobody asked for."""
    for marker, (option, variable) in OPT_IN.items():
        if _flag(config, option, variable):
            continue
        left_out = [item for item in items if item.get_closest_marker(marker)]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = [item for item in items if not item.get_closest_marker(marker)]


HEADLINES = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Keep a passed benchmark's ``extra_info["headline"]`` for the summary (the console table shows whole calls)."""
    report: pytest.TestReport = yield
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    if call.when == "call" and report.passed and fixture is not None and "headline" in fixture.extra_info:
        item.config.stash.setdefault(HEADLINES, []).append(fixture.extra_info["headline"])
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """The headline ratios, as on docs/explanation/benchmarks.md: the figures of ``extra_info``, not the table's whole-call times."""
    lines: Sequence[str] = config.stash.get(HEADLINES, [])
    if lines:
        terminalreporter.write_sep("=", "headline ratios")
        for line in lines:
            terminalreporter.write_line(headline_line(line, quick=_flag(config, "bench_quick", "BENCH_QUICK")))


def headline_line(headline: str, *, quick: bool) -> str:
    """A headline as printed: at the quick scale it says so, since a ratio there passes on relaxed floors, not on its goal.

    >>> headline_line("whole command vs the seed: 0.3x (goal 15x)", quick=True)
    'whole command vs the seed: 0.3x (goal 15x) [quick scale: relaxed floors, goals are for the default scale]'
    >>> headline_line("whole command vs the seed: 20.1x (goal 15x)", quick=False)
    'whole command vs the seed: 20.1x (goal 15x)'
    """
    return f"{headline} [quick scale: relaxed floors, goals are for the default scale]" if quick else headline


def _generated(folder: Path, rows: int, count: int) -> Path:
    """``folder`` holding the first ``count`` months of ``rows`` rows, writing any missing one."""
    missing = [m for m in months(count) if not (folder / month_filename(TAXI, m)).is_file()]
    if missing:
        write_months(folder, missing, rows, seed=0, taxi=TAXI, row_group_size=max(1, rows // GROUPS_PER_MONTH))
    return folder


@pytest.fixture(scope="session")
def bench(pytestconfig: pytest.Config) -> Bench:
    """Scale from the option, else the environment, else the default; months generated or reused."""
    quick = _flag(pytestconfig, "bench_quick", "BENCH_QUICK")
    rows = _rows_option(pytestconfig) or (QUICK_ROWS if quick else DEFAULT_ROWS)
    peer_rows = min(rows, QUICK_PEER_ROWS if quick else PEER_ROWS)
    data = pytestconfig.rootpath / ".benchmarks" / "data"
    return Bench(
        rows=rows,
        folder=_generated(data / str(rows), rows, MONTHS),
        peer_rows=peer_rows,
        peer_folder=_generated(data / str(peer_rows), peer_rows, 2),
        floors=QUICK_FLOORS if quick else DEFAULT_FLOORS,
    )


@dataclass(frozen=True)
class Year:
    """The year-scale benchmark's months: ``YEAR_MONTHS`` months of ``rows`` rows in ``folder``."""

    rows: int
    folder: Path


@pytest.fixture(scope="session")
def year(pytestconfig: pytest.Config) -> Year:
    rows = _rows_option(pytestconfig) or YEAR_ROWS
    return Year(rows, _generated(pytestconfig.rootpath / ".benchmarks" / "data" / str(rows), rows, YEAR_MONTHS))


@pytest.fixture
def one_core() -> Iterator[None]:
    """Arrow and BLAS on one thread, so rows/s is per core and the seed and project
    paths get the same budget (dask-ml's scheduler keeps its two threads, to its
    advantage). It also steadies the figures: on this shared 2-core box the
    533-unknown solve took 5 ms on one OpenBLAS thread and up to 350 ms on two
    while another process was busy.
    """
    cpus = pa.cpu_count()
    pa.set_cpu_count(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        pa.set_cpu_count(cpus)


@pytest.fixture(scope="session")
def command_environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Commands' environment (:func:`benchmarks.common.command_env`): one Prefect home for the session, so only the
    first command creates its database."""
    return command_env(tmp_path_factory.mktemp("command-prefect-home"))


@pytest.fixture(scope="session")
def stack_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Commands' environment with the local stack up in its Prefect home (``taxi-pipeline up`` on a free port, 2 workers).

    Its commands run on the stack, as a user's do after ``taxi-pipeline up``; ``down`` at the end.
    """
    env = command_env(tmp_path_factory.mktemp("stack-prefect-home"))
    _, out = run_python(["-m", "pipeline.cli", "up", "--port", str(free_port()), "--n-workers", "2"], env)
    assert "local stack up" in out, out
    try:
        yield env
    finally:
        run_python(["-m", "pipeline.cli", "down"], env)


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect API for the session on a throwaway ``PREFECT_HOME``."""
    with temporary_prefect_api(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url
