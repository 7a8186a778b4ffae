"""How cluster intent resolves (flags, DASK_SCHEDULER_ADDRESS, Dask config, LocalCluster), without starting anything."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import dask.config
import pytest
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.cluster import ClusterSpec, Connection, parse_cluster_kwargs, resolve
from pipeline.cluster.connect import _dask_logs_below, start_cluster
from pipeline.cluster.versions import mismatch
from pipeline.errors import PipelineError
from pipeline.runtime.runner import task_runner


@pytest.fixture(autouse=True)
def no_configured_scheduler(monkeypatch: pytest.MonkeyPatch):
    """Each test starts from no DASK_SCHEDULER_ADDRESS and no TLS in Dask's config."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": None, "distributed.comm.tls.ca-file": None, "distributed.comm.tls.client.cert": None}):
        yield


@pytest.fixture
def pems(tmp_path: Path) -> tuple[str, str, str]:
    """Three files standing in for CA, certificate and key (resolve only checks they exist)."""
    paths = []
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("pem")
        paths.append(str(tmp_path / name))
    return paths[0], paths[1], paths[2]


def test_nothing_given_means_a_local_cluster():
    plan = resolve(ClusterSpec())
    assert (plan.kind, plan.origin, plan.address, plan.tls, plan.note) == ("local", "LocalCluster", None, None, None)


def test_env_var_then_dask_config_choose_the_scheduler(monkeypatch):
    with dask.config.set({"scheduler-address": "tcp://10.0.0.5:8786"}):
        plan = resolve(ClusterSpec())
    assert (plan.kind, plan.address, plan.origin) == ("address", "tcp://10.0.0.5:8786", "Dask config scheduler-address")

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.6:8786")
    dask.config.refresh()
    try:
        plan = resolve(ClusterSpec())
        assert (plan.kind, plan.address, plan.origin) == ("address", "tcp://10.0.0.6:8786", "DASK_SCHEDULER_ADDRESS")
        # the flag wins over the environment
        plan = resolve(ClusterSpec(address="tcp://127.0.0.1:9999"))
        assert (plan.address, plan.origin) == ("tcp://127.0.0.1:9999", "--scheduler")
        # asking for a cluster of our own sets the configured address aside, and says so
        plan = resolve(ClusterSpec(n_workers=3))
        assert (plan.kind, plan.n_workers) == ("local", 3)
        assert (
            plan.note == "DASK_SCHEDULER_ADDRESS=tcp://10.0.0.6:8786 set aside: "
            "--n-workers, --adapt-* or --cluster-kwargs asks for a cluster started for this run"
        )
        plan = resolve(ClusterSpec(cluster_class="distributed.LocalCluster", cluster_kwargs='{"n_workers": 1}', adapt_max=4))
        assert (plan.kind, plan.cluster_class, dict(plan.cluster_kwargs), dict(plan.adapt)) == (
            "class",
            "distributed.LocalCluster",
            {"n_workers": 1},
            {"maximum": 4},
        )
        assert plan.note and plan.note.startswith("DASK_SCHEDULER_ADDRESS=tcp://10.0.0.6:8786 set aside: --cluster-class")
    finally:
        monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
        dask.config.refresh()


def test_scheme_less_address_gets_tcp_or_tls(pems):
    assert resolve(ClusterSpec(address="127.0.0.1:8786")).address == "tcp://127.0.0.1:8786"
    ca, cert, key = pems
    plan = resolve(ClusterSpec(address="127.0.0.1:8786", tls_ca_file=ca, tls_cert=cert, tls_key=key))
    assert plan.address == "tls://127.0.0.1:8786"
    assert plan.tls and (plan.tls.ca_file, plan.tls.cert, plan.tls.key, plan.tls.origin) == (ca, cert, key, "flags")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ClusterSpec(address="tcp://h:1", cluster_class="distributed.LocalCluster"), "--scheduler and --cluster-class contradict"),
        (ClusterSpec(address="tcp://h:1", n_workers=2), "--scheduler and --n-workers contradict"),
        (ClusterSpec(address="tcp://h:1", adapt_max=3), "--scheduler and --adapt-min/--adapt-max contradict"),
        (ClusterSpec(address="tcp://h:1", cluster_kwargs={"n_workers": 2}), "--scheduler and --cluster-kwargs contradict"),
        (ClusterSpec(n_workers=2, adapt_max=3), "--n-workers and --adapt-min/--adapt-max contradict"),
        (ClusterSpec(adapt_min=5, adapt_max=2), "--adapt-min 5 is above --adapt-max 2"),
        (ClusterSpec(address="tls://h:1"), "--scheduler tls://h:1: a tls:// scheduler needs --tls-ca-file/--tls-cert/--tls-key"),
        (ClusterSpec(tls_key="k.pem"), "--tls-key given without --tls-ca-file and --tls-cert"),
        (ClusterSpec(tls_ca_file="/nonexistent/ca.pem", tls_cert="/nonexistent/c.pem"), "--tls-ca-file /nonexistent/ca.pem: no such file"),
        (
            ClusterSpec(cluster_class="no_such_package.Cluster"),
            "--cluster-class 'no_such_package.Cluster': cannot import 'no_such_package'",
        ),
        (
            ClusterSpec(cluster_class="distributed.NoSuchCluster"),
            "--cluster-class 'distributed.NoSuchCluster': module 'distributed' has no attribute 'NoSuchCluster'",
        ),
        (
            ClusterSpec(cluster_class="LocalCluster"),
            "--cluster-class 'LocalCluster': expected an import path like dask_jobqueue.SLURMCluster",
        ),
        (ClusterSpec(cluster_kwargs='{"n_workers": 2,}'), "--cluster-kwargs: invalid JSON at line 1 column 17"),
        (ClusterSpec(cluster_kwargs="[1, 2]"), "--cluster-kwargs: expected a JSON object of keyword arguments, got list"),
        (ClusterSpec(cluster_kwargs='{"asynchronous": true}'), "--cluster-kwargs: asynchronous is managed by Prefect"),
    ],
)
def test_contradictions_and_bad_values_are_one_line_naming_the_flags(spec, message):
    with pytest.raises(PipelineError) as raised:
        resolve(spec)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_tls_flags_refuse_a_plaintext_address(pems):
    ca, cert, key = pems
    with pytest.raises(
        PipelineError, match=r"^--tls-ca-file/--tls-cert/--tls-key given but --scheduler tcp://h:1 is not tls://; use tls://h:1$"
    ):
        resolve(ClusterSpec(address="tcp://h:1", tls_ca_file=ca, tls_cert=cert, tls_key=key))


def test_tls_from_dask_config_when_no_flags(pems):
    ca, cert, key = pems
    with dask.config.set(
        {"distributed.comm.tls.ca-file": ca, "distributed.comm.tls.client.cert": cert, "distributed.comm.tls.client.key": key}
    ):
        plan = resolve(ClusterSpec(address="tls://h:1"))
    assert plan.tls and (plan.tls.ca_file, plan.tls.cert, plan.tls.key) == (ca, cert, key)
    assert plan.tls.origin == "Dask config distributed.comm.tls"


def test_cluster_kwargs_from_a_yaml_or_json_file(tmp_path):
    (tmp_path / "k.yaml").write_text("cores: 8\nmemory: 32GB\njob_extra_directives: ['--exclusive']\n")
    assert parse_cluster_kwargs(f"@{tmp_path / 'k.yaml'}") == {"cores": 8, "memory": "32GB", "job_extra_directives": ["--exclusive"]}
    (tmp_path / "bad.yaml").write_text("cores: [8\n")
    with pytest.raises(PipelineError, match=r"^--cluster-kwargs @.*bad\.yaml: invalid YAML at line 2 column 1"):
        parse_cluster_kwargs(f"@{tmp_path / 'bad.yaml'}")
    with pytest.raises(PipelineError, match=r"^--cluster-kwargs @/nonexistent/k\.yaml: cannot read /nonexistent/k\.yaml"):
        parse_cluster_kwargs("@/nonexistent/k.yaml")
    assert parse_cluster_kwargs(None) == parse_cluster_kwargs("  ") == {}


def test_example_cluster_kwargs_files_parse():
    examples = Path(__file__).resolve().parents[2] / "cluster" / "examples"
    found = sorted(examples.glob("*.yaml"))
    assert [p.name for p in found] == ["kubernetes.yaml", "slurm.yaml"]
    for path in found:
        assert parse_cluster_kwargs(f"@{path}")


def test_task_runner_carries_address_and_tls_through_prefects_duplicate(pems):
    from distributed.security import Security

    security = Security(tls_ca_file=pems[0], tls_client_cert=pems[1], tls_client_key=pems[2], require_encryption=True)
    runner = task_runner(Connection("tls://127.0.0.1:8786", None, 2, 2, "--scheduler", security))
    twin = runner.duplicate()  # what each worker does with the flow's runner
    assert twin.address == "tls://127.0.0.1:8786"
    assert twin.client_kwargs["security"] is security
    assert task_runner(Connection("tcp://127.0.0.1:8786", None, 2, 2)).client_kwargs == {"set_as_default": False}


def _versions(**worker_packages: str) -> dict:
    base = {
        "python": "3.11.9.final.0",
        "prefect": "3.8.8",
        "dask": "2026.8.0",
        "distributed": "2026.8.0",
        "pandas": "3.1.1",
        "pyarrow": "26.0.1",
        "numpy": "2.4.6",
    }
    return {
        "client": {"packages": base},
        "scheduler": {"packages": base},
        "workers": {"tcp://10.0.0.7:4001": {"packages": base}, "tcp://10.0.0.8:4001": {"packages": {**base, **worker_packages}}},
    }


def test_version_mismatch_names_package_versions_and_worker():
    assert mismatch(_versions()) is None
    assert mismatch(_versions(python="3.11.4.final.0")) is None  # patch releases pickle alike
    assert mismatch(_versions(pyarrow="25.0.0")) == (
        "package version mismatch: pyarrow 26.0.1 here (the client) but 25.0.0 on worker tcp://10.0.0.8:4001; "
        "install the same versions everywhere (pip install -c constraints.txt ...)"
    )
    assert mismatch(_versions(prefect=None)).startswith("package version mismatch: prefect 3.8.8 here (the client) but missing on worker")  # type: ignore[arg-type, union-attr]
    assert mismatch(_versions(python="3.12.1.final.0")).startswith(
        "package version mismatch: python 3.11 here (the client) but 3.12 on worker"
    )  # type: ignore[union-attr]


def test_nothing_listening_fails_at_once_in_one_line():
    import socket
    import time

    from pipeline.cluster import check_cluster

    with socket.socket() as probe:  # a port that was free a moment ago, on 127.0.0.1
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(
        PipelineError,
        match=rf"^scheduler tcp://127\.0\.0\.1:{port} \(--scheduler\): connection refused: "
        r"nothing listens there; is the scheduler running\?$",
    ):
        check_cluster(ClusterSpec(address=f"127.0.0.1:{port}"))
    assert time.monotonic() - started < 5


def test_worker_imports_call_a_module_function_once_given_as_module_colon_function(monkeypatch, tmp_path):
    import tempfile

    from pipeline.cluster.connect import _import_all
    from pipeline.edge import warm
    from pipeline.runtime.cluster_runner import WORKER_WARM_UP

    calls = []
    monkeypatch.setattr(warm, "warm_up", lambda: calls.append("warm"))
    _import_all(("pipeline.flows.train", WORKER_WARM_UP))
    assert calls == ["warm"]
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    warm.warm_up()  # the real one: a tiny month through the statistics path, in each codec
    assert list(tmp_path.iterdir()) == []  # its files are gone after


_PREFECT_LOGGING_FIRST = """
from prefect.logging.configuration import setup_logging

setup_logging()  # as a flow run's process has it (a deployment's run, a notebook) before Dask is imported
from pipeline.cluster import ClusterSpec, connect

with connect(ClusterSpec(n_workers=1, dashboard_address=":0")) as connection:
    print("workers", connection.workers)
"""


@pytest.mark.cluster
def test_a_cluster_started_after_prefect_set_up_logging_keeps_dasks_info_lines_off_the_console():
    """``silence_logs`` lowers Dask's own stderr handler, which distributed only adds when nothing configured logging
    first; after Prefect's set-up its records go to Prefect's console instead, and the scheduler's INFO lines did."""
    result = subprocess.run([sys.executable, "-c", _PREFECT_LOGGING_FIRST], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "workers 1" in result.stdout, result.stderr
    assert not [line for line in result.stderr.splitlines() if "| INFO    | distributed." in line], result.stderr


def test_overlapping_clusters_keep_dasks_info_lines_off_until_the_last_one_closes(monkeypatch):
    """The level is raised once and restored when the last holder leaves, not when the first one does."""
    logger = logging.getLogger("distributed")
    monkeypatch.setattr(logger, "handlers", [])  # as after Prefect set logging up first: no handler of Dask's own
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    first, second = _dask_logs_below(logging.WARNING), _dask_logs_below(logging.WARNING)
    first.__enter__()
    second.__enter__()
    assert logger.level == logging.WARNING
    first.__exit__(None, None, None)  # the first cluster closes while the second lives
    assert logger.level == logging.WARNING
    second.__exit__(None, None, None)
    assert logger.level == logging.NOTSET
    with _dask_logs_below(logging.WARNING):  # and a later cluster raises it again
        assert logger.level == logging.WARNING
    assert logger.level == logging.NOTSET


def test_dasks_own_handler_is_left_to_silence_logs(monkeypatch):
    """When distributed configured its own stderr handler, ``silence_logs`` lowers that, and the logger stays as it was."""
    logger = logging.getLogger("distributed")
    monkeypatch.setattr(logger, "handlers", [logging.StreamHandler()])
    monkeypatch.setattr(logger, "level", logging.INFO)
    with _dask_logs_below(logging.WARNING):
        assert logger.level == logging.INFO
    assert logger.level == logging.INFO


_DASHBOARD = """
import urllib.request
from urllib.parse import urlsplit

import psutil

from pipeline.cluster import ClusterSpec, connect

with connect(ClusterSpec(n_workers=1)) as connection:  # the default dashboard address
    link = connection.dashboard_link
    port = urlsplit(link).port
    # the LocalCluster's scheduler runs in this process: where does it listen for the dashboard?
    hosts = {c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == "LISTEN" and c.laddr.port == port}
    with urllib.request.urlopen(link, timeout=30) as page:
        print(link, page.status, ",".join(sorted(hosts)))
"""


@pytest.mark.cluster
def test_a_started_clusters_dashboard_link_answers_on_127_0_0_1():
    """bokeh is a dependency, so the link the run prints is live; by default it listens on 127.0.0.1 only."""
    result = subprocess.run([sys.executable, "-c", _DASHBOARD], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    link, status, hosts = result.stdout.split()
    assert link.startswith("http://127.0.0.1:") and link.endswith("/status") and status == "200"
    assert hosts == "127.0.0.1"  # not every interface


# --- a LocalCluster closing after a run gives its workers time to exit ------------------------------------------------


class _SlowExit(WorkerPlugin):
    """A worker that takes 6 s to close, as one did at load 8 after an xgboost run (Nanny.close's default: kill after 4 s)."""

    def teardown(self, worker: object) -> None:
        time.sleep(6)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_worker_slow_to_exit_is_waited_for_not_killed_with_a_warning():
    records = _Records()
    nanny = logging.getLogger("distributed.nanny")
    nanny.addHandler(records)
    try:
        with ExitStack() as stack:
            cluster = start_cluster(ClusterSpec(n_workers=1, dashboard_address=":0"), stack, plugins=[_SlowExit()])
            (worker,) = cluster.workers.values()
            process = worker.process.process
    finally:
        nanny.removeHandler(records)
    assert records.lines == []  # before: ["Worker process still alive after 4.0 seconds, killing"]
    assert process.exitcode == 0  # it exited by itself (a kill reads -9)


def test_a_lost_schedulers_tracebacks_stay_off_the_terminal_while_connected(caplog):
    """A task submitted as the scheduler went away raises CommClosedError in the client's IOLoop callback, which tornado
    logs with its traceback (a fresh clone's make test beside a busy loop printed it above the run's one line)."""
    from distributed.comm.core import CommClosedError

    from pipeline.cluster import connect

    def lost(name: str) -> None:
        try:
            raise CommClosedError("Comm <TCP (closed) Client->Scheduler> already closed.")
        except CommClosedError:
            logging.getLogger(name).error("Exception in callback %s", name, exc_info=True)

    with connect(ClusterSpec(n_workers=1, dashboard_address=":0", cluster_kwargs={"processes": False})):
        for name in ("tornado.application", "distributed.client", "distributed.batched"):
            lost(name)
    lost("tornado.application")  # after the run: not the run's to hide
    assert [r.name for r in caplog.records if r.getMessage().startswith("Exception in callback")] == ["tornado.application"]
