"""Shared fixtures: small generated months, a real Prefect API and Dask cluster on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dask.config
import pytest

from pipeline.core.months import parse_months
from pipeline.edge.synth import write_months
from pipeline.runtime.testing import PrefectServer, temporary_prefect_api

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
#: Dask's upkeep in every cluster the tests start, in this process and (through the environment) in the CLI runs and
#: `dask` processes they start: its statistical profiler samples every worker thread each 10 ms, its system monitor
#: polls psutil each 0.5 s and every event loop ticks each 20 ms. An idle scheduler and worker took 6% of a core
#: (2.4 CPU-s in 40 s), 1% without them; the suite keeps a dozen such processes for minutes, on 2 cores. No test is
#: about the profiler or those intervals.
_QUIET_DASK = {
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "5s",
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
}
for _name, _value in _QUIET_DASK.items():
    os.environ.setdefault(_name, _value)
dask.config.refresh()

#: The session fixtures below that start a server or a cluster, and the marker a test asking for one gets (directly
#: or through another fixture). Tests that start their own carry the marker themselves.
_FIXTURE_MARKERS = {
    "prefect_api_url": "prefect_api",
    "prefect_server": "prefect_api",
    "dask_processes": "cluster",
    "one_worker": "cluster",
    "tls_dask_processes": "cluster",
    "own_cluster": "cluster",
    "own_server": "prefect_api",
}


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist 3 reorders files by their number of tests, most first (--loadscope-reorder, on by default): the
    # order below never reached its scheduler, and files of one or two tests of minutes (the docs' commands, concurrent
    # runs) were handed out last, one process finishing them while the other idled. Keep the order made here.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in _FIXTURE_MARKERS:
                item.add_marker(_FIXTURE_MARKERS[fixture])
    # The files that start servers, clusters or runs first, then the rest, each file's tests in their order: `make test`'s
    # --dist loadfile hands out files in this order as its two processes free up, and the many files of milliseconds then
    # fill the end, where a file of minutes given last left one process idle while the other finished it.
    heavy = {item.path for item in items if any(item.get_closest_marker(name) for name in ("slow", "cluster", "prefect_api"))}
    items.sort(key=lambda item: item.path not in heavy)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run a block under another umask (process-wide: restored after)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


#: A previous run's files in an output folder: a run that failed leaves them exactly as they were, and adds none.
OLD_FILES = {"model.json": b'{"old": "model"}', "model.npz": b"old weights", "metrics.json": b'{"old": "metrics"}'}


@pytest.fixture
def old_output(tmp_path: Path) -> Path:
    """An output folder holding :data:`OLD_FILES`."""
    folder = tmp_path / "out"
    folder.mkdir()
    for name, data in OLD_FILES.items():
        (folder / name).write_bytes(data)
    return folder


def month_model(source: Path, folder: Path) -> Path:
    """A linear model solved from the statistics of ``source``'s 2023-01, saved as training saves one: a model to score with,
    in a second, with no run, API or cluster."""
    from pipeline.core import solve
    from pipeline.core.features import FeatureSpec
    from pipeline.core.model import Model
    from pipeline.core.months import Month
    from pipeline.edge import reader
    from pipeline.edge.chunks import chunk_statistics
    from pipeline.edge.model_files import save_model

    spec = FeatureSpec()
    plan = reader.locate(str(source), "yellow", Month(2023, 1), spec.columns())
    (chunk,) = reader.plan(plan.layout, plan.layout.rows)
    save_model(Model(solve.solve(chunk_statistics(plan, chunk, spec).unpack(), 1.0), spec), folder)
    return folder


def cli_here(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``taxi-pipeline ARGS`` through the command's own entry point (:func:`pipeline.cli.main`) in this process, with
    ``env`` added to the environment meanwhile: its exit code, stdout and stderr, as the command's process gives them.

    For input refused before a run starts, in a tenth of a second instead of the second a new interpreter spends on
    imports. What the process would print beside the command's own lines lands in stderr here too: Python's warnings
    (under the interpreter's default filters, not pytest's capture) and log records of WARNING and above (Python's
    last-resort handler). A whole run, Ctrl-C, or the process's own exit stay real subprocesses
    (``tests/cli/test_cli.py`` keeps one refusal so, as the contract's witness).
    """
    import io
    import logging
    import sys
    import warnings
    from contextlib import redirect_stderr, redirect_stdout

    from pipeline.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_environ, saved_argv = dict(os.environ), sys.argv
    os.environ.update(env or {})
    sys.argv = ["taxi-pipeline", *args]
    code: int | str | None = 0
    printed = logging.StreamHandler(stderr)
    printed.setLevel(logging.WARNING)
    logging.getLogger().addHandler(printed)
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr), warnings.catch_warnings():
            warnings.resetwarnings()  # a new interpreter's defaults: shown, but deprecations (outside __main__) and a few more
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: stderr.write(
                warnings.formatwarning(message, category, filename, lineno, line)
            )
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code
    finally:
        logging.getLogger().removeHandler(printed)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_environ)
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(["taxi-pipeline", *args], returncode, stdout.getvalue(), stderr.getvalue())


#: Small enough for seconds, large enough that every frequent pair recurs across months.
ROWS = 40_000


@pytest.fixture(scope="session", autouse=True)
def stats_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Runs with the statistics cache on keep it in the session's temporary folder, not in ~/.cache (subprocesses inherit it)."""
    os.environ["TAXI_PIPELINE_STATS_CACHE"] = str(tmp_path_factory.mktemp("stats-cache"))


@pytest.fixture(scope="session", autouse=True)
def prefect_home_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Prefect's home in the session's temporary folder, not ~/.prefect (subprocesses inherit it): a run that starts its
    own temporary API puts its database there, never in the user's, which other runs on the machine may be writing."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home-default"))


@pytest.fixture(scope="session")
def months_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three generated yellow months (2023-01..03), several row groups each."""
    folder = tmp_path_factory.mktemp("months")
    write_months(folder, parse_months("2023-01:2023-03"), ROWS, seed=0, row_group_size=10_000)
    return folder


@pytest.fixture(scope="session")
def recent_months(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small generated months ending last month: what a scheduled retrain (as of today) finds published."""
    from datetime import date

    from pipeline.core.months import Month

    folder = tmp_path_factory.mktemp("recent-months")
    last = Month(date.today().year, date.today().month).previous()
    write_months(folder, [last.shift(-2), last.shift(-1), last], 20_000, seed=2, row_group_size=10_000)
    return folder


@pytest.fixture(scope="session")
def slow_months(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three months cut into many small row groups: with --chunk-rows at one group, a run of 300 chunk tasks (Ctrl-C tests).

    Enough to be mid-run seconds after it starts: 120 tasks were, until task runs got cheaper (~40 ms each on 2 workers).
    """
    folder = tmp_path_factory.mktemp("slow-months")
    write_months(folder, parse_months("2023-01:2023-03"), 200_000, seed=1, row_group_size=2_000)
    return folder


@pytest.fixture(scope="session")
def migrated_prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PREFECT_HOME whose empty database is migrated to this Prefect's schema (``prefect server database upgrade``),
    made once: the test servers start on copies of it. A server on a new database spends ~8 s migrating it (half its
    start); the tests that start one are about what it serves, not its first start (``up`` in the docs' and the stack's
    tests still starts on a new one)."""
    import subprocess
    import sys

    home = tmp_path_factory.mktemp("migrated") / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    prefect = str(Path(sys.executable).with_name("prefect"))
    done = subprocess.run([prefect, "server", "database", "upgrade", "-y"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return home


def prefect_home_from(template: Path, home: Path) -> Path:
    """``home``, a copy of the migrated ``template`` (see :func:`migrated_prefect_home`)."""
    import shutil

    shutil.copytree(template, home)
    return home


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory, migrated_prefect_home: Path) -> Iterator[str]:
    """One real Prefect API on 127.0.0.1 for the session, on a throwaway database."""
    home = prefect_home_from(migrated_prefect_home, tmp_path_factory.mktemp("prefect-api") / "prefect-home")
    with temporary_prefect_api(home) as url:
        assert url.startswith("http://127.0.0.1:")
        yield url


# --- real Dask clusters of separate processes (tests/cluster/test_cluster_remote.py) --------------------------


def read_log_messages(flow_run_id: str) -> list[str]:
    """What the current Prefect API holds of a flow run's logs, now (logs arrive in batches: a caller that must wait
    for one polls)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return [entry.message for entry in logs]


def read_task_runs(flow_run_id: str, expected: int, timeout: float = 30.0) -> list:
    """Task runs the current Prefect API recorded for a flow run (they arrive as events: wait for ``expected`` completed)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                limit=200,
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            )
            done = [r for r in runs if r.state and r.state.is_completed()]
            if len(done) >= expected or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


def task_kind(name: str) -> str:
    """The task behind a task run's name: ``chunk-stats 2023-01:2023-03`` (named with its months) or ``cv-kfold-7f1`` (Prefect's)."""
    return name.split(" ", 1)[0] if " " in name else name.rsplit("-", 1)[0]


class DaskProcesses:
    """A ``dask scheduler`` and ``dask worker`` subprocesses on 127.0.0.1 (random ports), killed on close.

    Workers run with a nanny (``dask worker``'s default), so a worker process killed
    by a test is restarted, as on a real cluster. Their environment has no
    ``PREFECT_API_URL``: remote workers do not inherit the flow's.
    """

    def __init__(self, folder: Path, workers: int = 2, tls: tuple[Path, Path, Path] | None = None) -> None:
        import subprocess
        import sys
        import time

        self.folder = folder
        self.tls = tls
        dask = str(Path(sys.executable).with_name("dask"))
        tls_args = [] if tls is None else ["--tls-ca-file", str(tls[0]), "--tls-cert", str(tls[1]), "--tls-key", str(tls[2])]
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(PREFECT_HOME=str(folder / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        scheduler_file = folder / "scheduler.json"
        self.processes: list[subprocess.Popen] = []

        def start(args: list[str], log: str) -> subprocess.Popen:
            with open(folder / log, "wb") as out:
                process = subprocess.Popen(args, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
            self.processes.append(process)
            return process

        start(
            [
                dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
                *(["--protocol", "tls"] if tls else []),
                *tls_args,
            ],
            "scheduler.log",
        )
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if time.monotonic() > deadline or self.processes[0].poll() is not None:
                self.close()
                raise RuntimeError(f"dask scheduler did not start: {(folder / 'scheduler.log').read_text()[-2000:]}")
            time.sleep(0.1)
        import json

        self.address: str = json.loads(scheduler_file.read_text())["address"]
        for n in range(workers):
            start(
                [
                    dask,
                    "worker",
                    self.address,
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--name",
                    f"worker-{n}",
                    *tls_args,
                ],
                f"worker-{n}.log",
            )
        with self.client() as client:
            client.wait_for_workers(workers, timeout=60)

    def client(self):  # type: ignore[no-untyped-def]
        """A plain Dask client of this cluster (with its TLS files when it has them)."""
        from distributed import Client
        from distributed.security import Security

        security = None
        if self.tls:
            ca, cert, key = map(str, self.tls)
            security = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
        return Client(self.address, security=security, timeout="20s", set_as_default=False)

    def close(self) -> None:
        import subprocess

        # Workers (their nannies) first: with the scheduler gone they would retry it for seconds.
        for group in (self.processes[1:], self.processes[:1]):
            for process in group:
                process.terminate()
            for process in group:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskProcesses]:
    """A plaintext scheduler and two single-threaded workers, separate processes on 127.0.0.1, for a test file (two use
    it: stopped after each, not kept idle for the rest of the session)."""
    cluster = DaskProcesses(tmp_path_factory.mktemp("dask-tcp"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskProcesses]:
    """A scheduler and one single-threaded worker for the session: for runs whose cluster is not under test, which
    would each start (and stop) a LocalCluster of one worker, ~4 s of CPU a run, to give the same result. Runs that
    need the run's own LocalCluster (its dashboard, its workers' environment or their number) still start one."""
    cluster = DaskProcesses(tmp_path_factory.mktemp("dask-one"), workers=1)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[DaskProcesses]:
    """A scheduler and two workers of this test alone: for a test that kills them (the session's stay whole)."""
    (tmp_path / "dask").mkdir()
    cluster = DaskProcesses(tmp_path / "dask")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA, and a certificate and key it signed, made by ``pipeline.cluster.certs`` (for 127.0.0.1)."""
    from pipeline.cluster.certs import make_certificates

    files = make_certificates(tmp_path_factory.mktemp("tls"))
    return files.ca_file, files.cert, files.key


@pytest.fixture(scope="module")
def tls_dask_processes(tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path, Path]) -> Iterator[DaskProcesses]:
    """The same as ``dask_processes`` over TLS (tls://, mutual certificates)."""
    cluster = DaskProcesses(tmp_path_factory.mktemp("dask-tls"), tls=tls_files)
    try:
        yield cluster
    finally:
        cluster.close()


# --- a real `prefect server start` (deployments, work pools, workers) --------------------------------


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory, migrated_prefect_home: Path) -> Iterator[PrefectServer]:
    """A real `prefect server start` for the session (deployments need one that outlives a run)."""
    folder = tmp_path_factory.mktemp("prefect-server")
    prefect_home_from(migrated_prefect_home, folder / "prefect-home")
    server = PrefectServer(folder)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_server(tmp_path: Path, migrated_prefect_home: Path) -> Iterator[PrefectServer]:
    """A `prefect server start` of this test alone: for a test that kills it (the session's stays up)."""
    prefect_home_from(migrated_prefect_home, tmp_path / "prefect-server" / "prefect-home")
    server = PrefectServer(tmp_path / "prefect-server")
    try:
        yield server
    finally:
        server.close()
