"""Refuse a cluster whose workers run other versions of the packages a task touches.

Tasks, their inputs and the flow's context travel as cloudpickle between the
flow process and the workers; with another Python, Prefect, Dask, pandas,
pyarrow or NumPy on the other side they fail in ways that name none of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.errors import PipelineError

#: Compared between the client and every worker (and, for Dask's own, the scheduler).
PACKAGES = ("python", "prefect", "dask", "distributed", "pandas", "pyarrow", "numpy")
_SCHEDULER_PACKAGES = ("python", "dask", "distributed")


def _python(version: str | None) -> str | None:
    """Major.minor: pickles travel between patch releases, not between minor ones."""
    return ".".join(version.split(".")[:2]) if version else version


def _packages(info: Any) -> Mapping[str, Any]:
    return info.get("packages", {}) if isinstance(info, Mapping) else {}


def mismatch(versions: Mapping[str, Any], packages: tuple[str, ...] = PACKAGES) -> str | None:
    """The first difference between the client and the scheduler or a worker, as one line, or None.

    ``versions`` is what ``Client.get_versions(check=False, packages=[...])`` returns.
    """
    ours = dict(_packages(versions.get("client")))
    ours["python"] = _python(ours.get("python"))
    others: list[tuple[str, str, Mapping[str, Any], tuple[str, ...]]] = [
        ("scheduler", "", _packages(versions.get("scheduler")), _SCHEDULER_PACKAGES)
    ]
    others += [("worker", address, _packages(info), packages) for address, info in sorted(versions.get("workers", {}).items())]
    for role, address, theirs, names in others:
        for name in names:
            if name not in packages:
                continue
            mine, their = ours.get(name), theirs.get(name)
            if name == "python":
                their = _python(their)
            if mine != their:
                where = f"{role} {address}".strip()
                return (
                    f"package version mismatch: {name} {mine or 'missing'} here (the client) but {their or 'missing'} "
                    f"on {where}; install the same versions everywhere (pip install -c constraints.txt ...)"
                )
    return None


def check_versions(client: Any) -> None:
    """Raise :class:`PipelineError` naming the package, both versions and the worker, on any mismatch."""
    extra = [name for name in PACKAGES if name not in {"python", "dask", "distributed", "pandas", "numpy"}]
    problem = mismatch(client.get_versions(check=False, packages=extra))
    if problem:
        raise PipelineError(problem)
