"""Connect to (or start) the run's Dask cluster, check it, and build the flow's task runner.

The flow always gets ``DaskTaskRunner(address=...)`` (plus the TLS ``Security``
in ``client_kwargs``): a runner built from an address survives Prefect's
``duplicate()``, which drops a live ``cluster=`` object, and every worker
re-creates the runner from the flow's context. So clusters of our own (a
``LocalCluster`` or a ``--cluster-class``) are started here, for the run, and
handed to the flow by address. Starting them after the Prefect API URL is
exported lets LocalCluster workers inherit it; remote workers get it from the
worker plugins the caller passes (the runtime's
:class:`pipeline.runtime.plugins.PrefectApiPlugin`). This package knows Dask and
the project's errors only; the Prefect task runner is the runtime's
(:func:`pipeline.runtime.runner.task_runner`).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from distributed import Client, LocalCluster
from distributed.comm.core import CommClosedError
from distributed.versions import VersionMismatchWarning

from pipeline.cluster.spec import ClusterSpec, Plan, Tls, load_cluster_class, resolve
from pipeline.cluster.versions import check_versions
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

_TLS_FLAGS = "--tls-ca-file/--tls-cert/--tls-key"


@dataclass(frozen=True)
class Connection:
    """A reachable, checked scheduler: its address, dashboard, workers at connect time, and how it was chosen."""

    address: str
    dashboard_link: str | None
    workers: int
    threads: int  # tasks the cluster runs at once at connect time (at least 1)
    origin: str = "LocalCluster"
    security: Any = None  # distributed.security.Security for TLS, else None
    note: str | None = None


def _speaks_tls(address: str, timeout: float = 3.0) -> bool:
    """Whether the server at ``tcp://host:port`` answers a TLS handshake (so it wants tls://)."""
    host, _, port = address.partition("://")[2].rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw, context.wrap_socket(raw) as tls:
            tls.getpeercert(binary_form=True)
        return True
    except ssl.SSLError as exc:
        return "alert" in str(exc).lower()  # the server spoke TLS to refuse us; a plain server gives no alert
    except (OSError, ValueError):
        return False


def _explain(address: str, origin: str, exc: BaseException, tls: Tls | None, timeout: float) -> str:
    """One line for a failed connection, from what Dask raised (each case seen with real processes)."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    where = f"scheduler {address} ({origin})"
    if "certificate does not match" in text or isinstance(cause, ssl.SSLCertVerificationError):
        return f"{where}: its TLS certificate is not signed by the CA in {tls.ca_file if tls else 'the TLS config'} ({cause or exc})"
    if address.startswith("tls://") and isinstance(cause, (ssl.SSLEOFError, ssl.SSLError, ConnectionResetError)):
        cert = tls.cert if tls else ""
        return f"{where}: closed the TLS handshake; it does not accept our certificate {cert} (not signed by a CA it trusts?)"
    if address.startswith("tcp://") and ("reset by peer" in text or "closed" in text.lower()) and _speaks_tls(address):
        return f"{where}: refused the connection; it requires TLS: use tls://{address.partition('://')[2]} and pass {_TLS_FLAGS}"
    if "Timed out" in text or isinstance(exc, (TimeoutError, OSError)):
        return f"{where}: no answer within {timeout:g} s; is it running, and reachable from here? ({text})"
    return f"{where}: cannot connect: {text}"


def _refuse_if_unreachable(address: str, origin: str) -> None:
    """Fail at once when nothing listens there (Dask would retry for the whole connect timeout)."""
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme not in ("tcp", "tls") or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except ConnectionRefusedError as exc:
        raise PipelineError(
            f"scheduler {address} ({origin}): connection refused: nothing listens there; is the scheduler running?"
        ) from exc
    except socket.gaierror as exc:
        raise PipelineError(f"scheduler {address} ({origin}): unknown host {host!r} ({exc.strerror})") from exc
    except OSError:
        return  # a timeout or a firewall: let Dask try, and explain what it says


def _client(target: Any, plan: Plan, spec: ClusterSpec, security: Any) -> Client:
    address = target if isinstance(target, str) else target.scheduler_address
    if isinstance(target, str):
        _refuse_if_unreachable(address, plan.origin)
    try:
        with warnings.catch_warnings():
            # Dask's own table of differing versions; check_versions says it in one line, for more packages
            warnings.simplefilter("ignore", VersionMismatchWarning)
            return Client(target, security=security, timeout=f"{spec.connect_timeout}s", set_as_default=False)
    except PipelineError:
        raise
    except Exception as exc:
        raise PipelineError(_explain(address, plan.origin, exc, plan.tls, spec.connect_timeout)) from exc


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """As :func:`pipeline.edge.ports.port_is_free` (a port in TIME_WAIT is free): cluster/ imports no layer but the errors."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def _dashboard_address(asked: str) -> str:
    """``asked``, or any free port when its port is taken (the local stack's cluster has :8787): Dask would warn, then do so."""
    host, _, port = asked.rpartition(":")
    if not port.isdigit() or int(port) == 0 or _port_is_free(int(port), host):
        return asked
    return f"{host}:0"


class _DaskLogsBelow:
    """While any cluster started here lives, what ``silence_logs`` means whichever of Prefect and Dask set up logging first.

    ``silence_logs`` lowers the stderr handler distributed adds to its logger, which it adds only
    when logging was not configured yet. Imported after Prefect set logging up (a deployment's flow
    run, a notebook), distributed's records propagate to Prefect's console instead, every INFO line
    of the scheduler and nannies with them: then the logger itself is raised to the level. Holders
    are counted, so of two clusters whose lives overlap the first to close leaves the level alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._previous: int | None = None  # the level to restore, when this raised it

    @contextmanager
    def __call__(self, level: int) -> Iterator[None]:
        logger = logging.getLogger("distributed")
        with self._lock:
            if self._holders == 0:
                own_handler = any(isinstance(handler, logging.StreamHandler) for handler in logger.handlers)
                self._previous = None if own_handler or logger.level >= level else logger.level
                if self._previous is not None:
                    logger.setLevel(level)
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._previous is not None:
                    logger.setLevel(self._previous)
                    self._previous = None


_dask_logs_below = _DaskLogsBelow()


class _NoLostSchedulerTracebacks(logging.Filter):
    """Drop the tracebacks distributed logs when the scheduler goes away mid-run (a batched send to a closed comm, a
    reconnect cancelled as the client closes): the run says in one line that the scheduler went away."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], (asyncio.CancelledError, CommClosedError)))


def _start_cluster(plan: Plan, spec: ClusterSpec, stack: ExitStack) -> Any:
    """Start the LocalCluster or the named cluster class for this run (closed with ``stack``)."""
    kwargs = dict(plan.cluster_kwargs)
    if plan.kind == "local":
        defaults: dict[str, Any] = {
            "n_workers": plan.adapt.get("minimum", 0) if plan.adapt else plan.n_workers,
            "threads_per_worker": spec.threads_per_worker,
            "processes": True,
            "dashboard_address": _dashboard_address(spec.dashboard_address),
            "silence_logs": logging.WARNING,
        }
        if plan.tls:
            defaults.update(protocol="tls://", security=plan.tls.security(every_role=True))
        stack.enter_context(_dask_logs_below(logging.WARNING))
        cluster = stack.enter_context(LocalCluster(**{**defaults, **kwargs}))
        stack.enter_context(_workers_close_unhurried(cluster, WORKER_CLOSE_TIMEOUT))
    else:
        cls = load_cluster_class(plan.cluster_class or "")
        if plan.tls:
            kwargs.setdefault("security", plan.tls.security(every_role=True))
        try:
            made = cls(**kwargs)
        except Exception as exc:
            raise PipelineError(f"--cluster-class {plan.cluster_class}: could not start: {type(exc).__name__}: {exc}") from exc
        cluster = stack.enter_context(made) if hasattr(made, "__exit__") else made
        if plan.n_workers is not None:
            cluster.scale(plan.n_workers)
    if plan.adapt:
        cluster.adapt(**plan.adapt)
    return cluster


#: Seconds a LocalCluster closing after a run gives each worker (its process exits after 80% of it, or is killed).
#: distributed's own, ``Nanny.close``'s default 5 s, is short of a worker's exit on a busy machine: at load 8, after a
#: retrain whose xgboost challenger ran on the workers, both printed "distributed.nanny - WARNING - Worker process
#: still alive after 4.0 seconds, killing" below the run's results.
WORKER_CLOSE_TIMEOUT = 15.0


@contextmanager
def _workers_close_unhurried(cluster: Any, timeout: float) -> Iterator[None]:
    """On a normal exit, close ``cluster``'s workers with ``timeout`` before the cluster closes the rest; after an
    error or a Ctrl-C the cluster closes them at its own pace (the run is stopping: no waiting)."""
    yield
    cluster.sync(_close_workers, list(cluster.workers.values()), timeout)


async def _close_workers(workers: list[Any], timeout: float) -> None:
    await asyncio.gather(*(worker.close(timeout=timeout) for worker in workers))


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None


def _dashboard(client: Client, cluster: Any) -> str | None:
    """The dashboard's link when the scheduler can draw it: without bokeh it answers every page with an error."""
    if "dashboard" not in client.scheduler_info().get("services", {}) or not client.run_on_scheduler(_has_bokeh):
        return None
    return getattr(cluster, "dashboard_link", None) if cluster is not None else client.dashboard_link


def check_cluster(spec: ClusterSpec) -> Plan:
    """Resolve ``spec``; for a running scheduler also connect once and compare versions.

    Meant for before the run's Prefect API starts: contradicting flags, a wrong
    address, a TLS mismatch or version skew then fail in about a second.
    """
    plan = resolve(spec)
    if plan.kind == "address" and plan.address:
        with _client(plan.address, plan, spec, plan.tls.security() if plan.tls else None) as client:
            check_versions(client)
    return plan


class EarlyCluster:
    """The run's own LocalCluster, started in a thread while the caller starts its Prefect API (see :func:`started_early`)."""

    def __init__(self, spec: ClusterSpec, imports: tuple[str, ...] = ()) -> None:
        self._spec, self._stack = spec, ExitStack()
        plan = resolve(spec)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="start-cluster") if plan.kind == "local" else None
        self._starting = self._pool.submit(self._start, plan, imports) if self._pool else None

    def _start(self, plan: Plan, imports: tuple[str, ...]) -> Any:
        """Start the cluster, then have its workers import ``imports`` (Prefect: seconds each) while the API still starts."""
        return start_cluster(self._spec, self._stack, imports, plan=plan)

    def spec(self) -> ClusterSpec:
        """A spec addressing the started cluster (TLS flags kept), or the caller's own when nothing was started here."""
        if self._starting is None:
            return self._spec
        mine = self._spec
        address = self._starting.result().scheduler_address
        return ClusterSpec(
            address,
            tls_ca_file=mine.tls_ca_file,
            tls_cert=mine.tls_cert,
            tls_key=mine.tls_key,
            connect_timeout=mine.connect_timeout,
            origin="LocalCluster started for this run",
        )

    def close(self) -> None:
        """Close the cluster (once a start under way has finished); closing again does nothing."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._stack.close()


def start_cluster(
    spec: ClusterSpec, stack: ExitStack, imports: tuple[str, ...] = (), plugins: Sequence[Any] = (), *, plan: Plan | None = None
) -> Any:
    """Start the cluster ``spec`` asks for (closed with ``stack``), with the worker ``plugins`` registered and importing ``imports``.

    An ``imports`` entry ``module:function`` also calls that function on each worker, once.
    """
    cluster = _start_cluster(plan or resolve(spec), spec, stack)
    if imports or plugins:
        with Client(cluster, set_as_default=False) as client:
            for plugin in plugins:
                client.register_plugin(plugin)
            if imports:
                client.run(_import_all, imports)
    return cluster


def _import_all(modules: tuple[str, ...]) -> None:
    """Import each module; a ``module:function`` entry then calls the function (a worker's warm-up)."""
    for entry in modules:
        name, _, function = entry.partition(":")
        module = importlib.import_module(name)
        if function:
            getattr(module, function)()


@contextmanager
def started_early(spec: ClusterSpec, imports: tuple[str, ...] = ()) -> Iterator[EarlyCluster]:
    """Start the run's own LocalCluster in a thread now, so that its ~2 s overlap the Prefect API's start.

    The flow then connects to it by address as to any scheduler, and its worker plugins (the runtime's
    ``PrefectApiPlugin``) point the workers at the API, which did not exist when they started. A scheduler address or a cluster class
    is left to the flow (``spec()`` gives the caller's spec back). Its workers import ``imports`` meanwhile.
    The cluster closes on exit, or at ``close()``.
    """
    early = EarlyCluster(spec, imports)
    try:
        yield early
    finally:
        early.close()


@contextmanager
def connect(spec: ClusterSpec, plugins: Sequence[Any] = ()) -> Iterator[Connection]:
    """Yield a checked connection for the run; a cluster started here is closed after.

    Each of the worker ``plugins`` is registered on every worker (including those that
    join later) before it runs a task (the runtime's ``PrefectApiPlugin`` points them
    at the run's Prefect API). Raises
    :class:`PipelineError` with one line for contradicting flags, an unreachable
    or TLS-mismatched scheduler, or package versions that differ from ours.
    """
    plan = resolve(spec)
    if plan.note:
        log.info("%s", plan.note)
    security = plan.tls.security() if plan.tls else None
    quiet = _NoLostSchedulerTracebacks()
    with ExitStack() as stack:
        # tornado.application: a task submitted as the scheduler went away (the client's send in an IOLoop callback)
        for logger in map(logging.getLogger, ("distributed.client", "distributed.batched", "tornado.application")):
            logger.addFilter(quiet)
            stack.callback(logger.removeFilter, quiet)
        cluster = None
        if plan.kind == "address":
            client = stack.enter_context(_client(plan.address, plan, spec, security))
        else:
            cluster = _start_cluster(plan, spec, stack)
            client = stack.enter_context(_client(cluster, plan, spec, security))
        for plugin in plugins:
            client.register_plugin(plugin)
        check_versions(client)
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        threads = max(1, sum(w.get("nthreads", 1) for w in workers.values()))
        yield Connection(client.scheduler.address, _dashboard(client, cluster), len(workers), threads, plan.origin, security, plan.note)
