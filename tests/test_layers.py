"""What the layer contracts cannot see: what a module drags in when it is imported at run time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_ORCHESTRATION = ("prefect", "prefect_dask", "dask", "distributed")


def _loaded_after(*modules: str) -> set[str]:
    """Top-level packages loaded by importing ``modules`` in a fresh interpreter."""
    code = f"import sys; import {', '.join(modules)}; import json; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(
    "modules",
    [
        ("benchmarks.common", "benchmarks.chunk_memory"),  # the kernel measurements
        ("pipeline.edge.chunks", "pipeline.edge.row_fits", "pipeline.edge.model_files", "pipeline.edge.metrics"),
        ("pipeline.core.config", "pipeline.core.render", "pipeline.core.training"),
    ],
)
def test_the_kernel_the_core_and_the_edge_load_no_prefect_and_no_dask(modules):
    assert _loaded_after(*modules).isdisjoint(_ORCHESTRATION)


def test_the_cli_loads_prefect_and_dask_only_when_a_run_starts():
    assert _loaded_after("pipeline.cli").isdisjoint(_ORCHESTRATION)  # --help and bad flags answer at once
