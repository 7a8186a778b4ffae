"""User intent about the cluster, and the one rule that resolves it into a plan.

Precedence, first match wins:

1. ``--scheduler ADDRESS``: connect to a running scheduler;
2. ``--cluster-class a.b.Class`` (with ``--cluster-kwargs``, ``--adapt-*``,
   ``--n-workers``): start that cluster for the run;
3. ``--n-workers``, ``--adapt-*`` or ``--cluster-kwargs`` alone: start a
   ``LocalCluster`` (they ask for a cluster of our own, so a configured address
   is ignored, and the announcement says so);
4. ``DASK_SCHEDULER_ADDRESS`` or ``scheduler-address`` in Dask's config files;
5. a ``LocalCluster`` sized by Dask (one worker per core).

TLS comes from ``--tls-ca-file/--tls-cert/--tls-key``, else from Dask's own
``distributed.comm.tls.*`` config. Contradictions are refused here, before any
server or worker starts, with one line naming the flags.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask.config

from pipeline.errors import PipelineError

Kind = Literal["address", "class", "local"]

#: Keyword arguments the DaskTaskRunner manages itself.
_RESERVED_KWARGS = frozenset({"asynchronous"})


@dataclass(frozen=True)
class ClusterSpec:
    """User intent: where tasks run. Every field is optional; see the module docstring for precedence.

    Parameters
    ----------
    address
        A running scheduler, ``tcp://HOST:PORT`` or ``tls://HOST:PORT``.
    n_workers
        Workers to start: of the LocalCluster, or ``cluster.scale(n)`` of a ``cluster_class``.
    cluster_class
        Import path of a Dask cluster manager, e.g. ``dask_jobqueue.SLURMCluster``.
    cluster_kwargs
        Keyword arguments of ``cluster_class`` (or of the LocalCluster when no class is
        named): a mapping, or the text of ``--cluster-kwargs`` (JSON, or ``@FILE`` of JSON/YAML).
    dashboard_address
        Where a LocalCluster started here serves its dashboard: 127.0.0.1 unless asked otherwise (``:8787`` serves
        every interface); a taken port gives way to a free one.
    adapt_min, adapt_max
        Let the started cluster scale itself between these numbers of workers.
    tls_ca_file, tls_cert, tls_key
        PEM files for TLS: the CA that signed the cluster's certificates, ours, and its key.
    origin
        What chose ``address``, as messages name it: ``--scheduler``, or a LocalCluster the run started early.
    """

    address: str | None = None
    n_workers: int | None = None
    threads_per_worker: int = 1
    dashboard_address: str = "127.0.0.1:8787"
    cluster_class: str | None = None
    cluster_kwargs: Mapping[str, Any] | str | None = None
    adapt_min: int | None = None
    adapt_max: int | None = None
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float = 20.0
    origin: str = "--scheduler"


@dataclass(frozen=True)
class Tls:
    """PEM paths for TLS, and where they came from (flags or Dask's config)."""

    ca_file: str
    cert: str
    key: str | None
    origin: str

    def security(self, *, every_role: bool = False) -> Any:
        """A ``distributed.security.Security`` for a client (or, ``every_role``, a whole LocalCluster)."""
        from distributed.security import Security

        roles = ("client", "scheduler", "worker") if every_role else ("client",)
        pems: dict[str, str] = {}
        for role in roles:
            pems[f"tls_{role}_cert"] = self.cert
            if self.key:
                pems[f"tls_{role}_key"] = self.key
        return Security(tls_ca_file=self.ca_file, require_encryption=True, **pems)


@dataclass(frozen=True)
class Plan:
    """A resolved spec: connect to ``address``, or start ``cluster_class`` (``None``: a LocalCluster)."""

    kind: Kind
    origin: str  # what chose this: "--scheduler", "DASK_SCHEDULER_ADDRESS", "LocalCluster", a class path...
    address: str | None = None
    cluster_class: str | None = None
    cluster_kwargs: Mapping[str, Any] = field(default_factory=dict)
    n_workers: int | None = None
    adapt: Mapping[str, int] = field(default_factory=dict)
    tls: Tls | None = None
    note: str | None = None  # why a configured address was set aside, if it was


def _flag_tls(spec: ClusterSpec) -> Tls | None:
    given = {"--tls-ca-file": spec.tls_ca_file, "--tls-cert": spec.tls_cert, "--tls-key": spec.tls_key}
    if not any(given.values()):
        return None
    if not spec.tls_ca_file or not spec.tls_cert:
        missing = " and ".join(flag for flag in ("--tls-ca-file", "--tls-cert") if not given[flag])
        present = ", ".join(flag for flag, value in given.items() if value)
        raise PipelineError(
            f"{present} given without {missing}: TLS needs the CA file and our certificate "
            "(and its key unless the certificate file holds it)"
        )
    for flag, value in given.items():
        if value and not Path(value).is_file():
            raise PipelineError(f"{flag} {value}: no such file")
    return Tls(spec.tls_ca_file, spec.tls_cert, spec.tls_key, "flags")


def _config_tls() -> Tls | None:
    """TLS files from Dask's config (``distributed.comm.tls.ca-file``, ``.client.cert``, ``.client.key``)."""
    ca_file = dask.config.get("distributed.comm.tls.ca-file", None)
    cert = dask.config.get("distributed.comm.tls.client.cert", None)
    if not ca_file or not cert:
        return None
    return Tls(ca_file, cert, dask.config.get("distributed.comm.tls.client.key", None), "Dask config distributed.comm.tls")


def configured_address() -> tuple[str | None, str]:
    """``DASK_SCHEDULER_ADDRESS`` or ``scheduler-address`` in Dask's config files, and which it was."""
    address = dask.config.get("scheduler-address", None) or None
    if address and os.environ.get("DASK_SCHEDULER_ADDRESS") == address:
        return address, "DASK_SCHEDULER_ADDRESS"
    return address, "Dask config scheduler-address"


def load_cluster_class(path: str) -> Any:
    """Import ``package.module.Class``; a bad path is one clear line."""
    module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise PipelineError(f"--cluster-class {path!r}: expected an import path like dask_jobqueue.SLURMCluster")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"--cluster-class {path!r}: cannot import {module_name!r} ({exc}); is its package installed?") from exc
    try:
        cls = getattr(module, attribute)
    except AttributeError as exc:
        raise PipelineError(f"--cluster-class {path!r}: module {module_name!r} has no attribute {attribute!r}") from exc
    if not callable(cls):
        raise PipelineError(f"--cluster-class {path!r}: not a class or callable")
    return cls


def parse_cluster_kwargs(text: str | None) -> dict[str, Any]:
    """``--cluster-kwargs``: a JSON object, or ``@FILE`` holding one in JSON or YAML."""
    if text is None or not text.strip():
        return {}
    source = text.strip()
    if source.startswith("@"):
        path = Path(source[1:]).expanduser()
        try:
            body = path.read_text()
        except OSError as exc:
            raise PipelineError(f"--cluster-kwargs {source}: cannot read {path}: {exc.strerror or exc}") from exc
        import yaml  # a dependency of dask; YAML is a superset of JSON

        try:
            value = yaml.safe_load(body)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            raise PipelineError(f"--cluster-kwargs {source}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc
    else:
        try:
            value = json.loads(source)
        except json.JSONDecodeError as exc:
            raise PipelineError(f"--cluster-kwargs: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise PipelineError(f"--cluster-kwargs: expected a JSON object of keyword arguments, got {type(value).__name__}")
    reserved = sorted(_RESERVED_KWARGS & set(value))
    if reserved:
        raise PipelineError(f"--cluster-kwargs: {', '.join(reserved)} is managed by Prefect's DaskTaskRunner; leave it out")
    return value


def _adapt(spec: ClusterSpec) -> dict[str, int]:
    adapt = {key: value for key, value in (("minimum", spec.adapt_min), ("maximum", spec.adapt_max)) if value is not None}
    if spec.adapt_min is not None and spec.adapt_max is not None and spec.adapt_min > spec.adapt_max:
        raise PipelineError(f"--adapt-min {spec.adapt_min} is above --adapt-max {spec.adapt_max}")
    if adapt and spec.n_workers is not None:
        raise PipelineError("--n-workers and --adapt-min/--adapt-max contradict: a fixed number of workers, or an adaptive range, not both")
    return adapt


def _check_scheme(address: str, origin: str, tls: Tls | None) -> str:
    """A scheme-less address gets ``tls://`` when TLS is configured, else ``tcp://``; contradictions are refused."""
    scheme, sep, _ = address.partition("://")
    if not sep:
        return f"{'tls' if tls else 'tcp'}://{address}"
    if scheme == "tls" and tls is None:
        raise PipelineError(
            f"{origin} {address}: a tls:// scheduler needs --tls-ca-file/--tls-cert/--tls-key (or distributed.comm.tls.* in Dask's config)"
        )
    if scheme != "tls" and tls is not None and tls.origin == "flags":
        raise PipelineError(
            f"--tls-ca-file/--tls-cert/--tls-key given but {origin} {address} is not tls://; use tls://{address.partition('://')[2]}"
        )
    return address


def resolve(spec: ClusterSpec) -> Plan:
    """Turn intent into a plan, or raise :class:`PipelineError` naming the contradicting flags. Starts nothing."""
    tls = _flag_tls(spec)
    adapt = _adapt(spec)
    kwargs = parse_cluster_kwargs(spec.cluster_kwargs) if isinstance(spec.cluster_kwargs, str) else dict(spec.cluster_kwargs or {})
    if spec.address:
        clashes = [
            flag
            for flag, given in (
                ("--cluster-class", spec.cluster_class),
                ("--n-workers", spec.n_workers is not None),
                ("--adapt-min/--adapt-max", adapt),
                ("--cluster-kwargs", kwargs),
            )
            if given
        ]
        if clashes:
            raise PipelineError(
                f"--scheduler and {' and '.join(clashes)} contradict: connect to a running scheduler "
                "(its workers are started where it runs), or start a cluster for the run, not both"
            )
        return Plan(
            "address", spec.origin, address=_check_scheme(spec.address, spec.origin, tls or _config_tls()), tls=tls or _config_tls()
        )

    configured, config_origin = configured_address()
    if spec.cluster_class or spec.n_workers is not None or adapt or kwargs:
        note = None
        if configured:
            chosen = "--cluster-class" if spec.cluster_class else "--n-workers, --adapt-* or --cluster-kwargs"
            note = f"{config_origin}={configured} set aside: {chosen} asks for a cluster started for this run"
        if spec.cluster_class:
            load_cluster_class(spec.cluster_class)
            return Plan(
                "class",
                spec.cluster_class,
                cluster_class=spec.cluster_class,
                cluster_kwargs=kwargs,
                n_workers=spec.n_workers,
                adapt=adapt,
                tls=tls or _config_tls(),
                note=note,
            )
        return Plan("local", "LocalCluster", cluster_kwargs=kwargs, n_workers=spec.n_workers, adapt=adapt, tls=tls, note=note)

    if configured:
        return Plan(
            "address", config_origin, address=_check_scheme(configured, config_origin, tls or _config_tls()), tls=tls or _config_tls()
        )
    return Plan("local", "LocalCluster", tls=tls)
