"""What the benchmarks share: the project's path as the flow runs it, and how to time it.

Everything here runs in one process on whatever threads the caller allows (the
``one_core`` fixture pins them to one), so a figure is the cost of the code, not
of the orchestration around it; the flow benchmarks measure that separately.
Every rows/s in the suite counts the rows of the parquet files read, before the
duration filter (which keeps about 97.6% of them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from operator import add
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import solve, stats
from pipeline.core.config import DEFAULT_CHUNK_ROWS
from pipeline.core.features import Encoded, FeatureSpec, encode
from pipeline.core.months import Month
from pipeline.edge import reader
from pipeline.edge.chunks import chunk_statistics
from pipeline.edge.sources import month_filename

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

TAXI = "yellow"
SPEC = FeatureSpec()
#: The default ridge penalty: plain least squares for all practical purposes.
ALPHA = 1e-3
#: Rows per chunk task as users run it.
CHUNK_ROWS: int = DEFAULT_CHUNK_ROWS
#: The 4 columns the model reads, under their physical yellow-taxi names: the decode floor.
RAW_COLUMNS = ("tpep_pickup_datetime", "tpep_dropoff_datetime", "PULocationID", "DOLocationID")

_T = TypeVar("_T")


def months(count: int) -> list[Month]:
    """``count`` consecutive months from 2023-01: train on all but the last, validate on the last."""
    out = [Month(2023, 1)]
    while len(out) < count:
        out.append(out[-1].next())
    return out


def month_path(folder: Path, month: Month) -> Path:
    return folder / month_filename(TAXI, month)


def best_of(fn: Callable[[], _T], rounds: int = 1, benchmark: BenchmarkFixture | None = None) -> tuple[float, _T]:
    """Best wall time of ``rounds`` calls of ``fn``, and its result.

    Best rather than mean: the machine is shared and noisy, and the least disturbed
    run is the closest to what the code costs. With ``benchmark`` the calls go
    through pytest-benchmark, so they land in ``--benchmark-json`` as well; the
    times are taken here too, because ``--benchmark-disable`` leaves it no stats.
    """
    times: list[float] = []

    def timed() -> _T:
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        return result

    if benchmark is not None:
        result = benchmark.pedantic(timed, rounds=rounds, iterations=1)
    else:
        for _ in range(rounds):
            result = timed()
    return min(times), result


def best_interleaved(fns: Sequence[Callable[[], object]], rounds: int) -> list[float]:
    """Best wall time of each of ``fns`` over ``rounds`` rounds that call each in turn.

    For a ratio of two timings: load that comes and goes on a shared machine
    then hits both alike, where timing one's rounds and then the other's skews it.
    """
    times = [[best_of(fn)[0] for fn in fns] for _ in range(rounds)]
    return [min(column) for column in zip(*times)]


def decode(path: Path) -> pa.Table:
    """The floor: Arrow's parquet decode of the 4 needed columns, nothing else."""
    return pq.read_table(path, columns=list(RAW_COLUMNS))


def read_month(folder: Path, month: Month) -> pa.Table:
    """A whole month as one normalised Arrow table, as a chunk task sees its rows."""
    layout = reader.inspect(month_path(folder, month), SPEC.columns())
    (whole,) = reader.plan(layout, layout.rows)
    return reader.read(layout, whole)


def encoded_month(folder: Path, month: Month) -> Encoded:
    return encode(read_month(folder, month), SPEC)


def month_stats(folder: Path, month: Month, folds: int = 1) -> stats.Stats:
    """A month file to statistics as the flow's map step does it: the ``chunk-stats`` task body per chunk, added."""
    plan = reader.locate(str(folder), TAXI, month, SPEC.columns())
    return stats.combine([chunk_statistics(plan, chunk, SPEC, folds) for chunk in reader.plan(plan.layout, CHUNK_ROWS)])


@dataclass(frozen=True)
class Fitted:
    train_rows: int
    val_rows: int
    train_rmse: float
    val_rmse: float


def project_fit(folder: Path, train: Sequence[Month], val: Month, alpha: float = ALPHA) -> Fitted:
    """The project's path on one core: statistics per month, exact ridge, RMSEs from statistics."""
    pooled = reduce(add, (month_stats(folder, m) for m in train))
    held_out = month_stats(folder, val)
    weights = solve.solve(pooled, alpha)
    return Fitted(pooled.rows, held_out.rows, solve.rmse(weights, pooled), solve.rmse(weights, held_out))


def run_python(args: Sequence[str], env: Mapping[str, str]) -> tuple[float, str]:
    """Wall time of a fresh Python process running ``args`` (start-up and imports included), and its stdout."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=dict(env), timeout=3600)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    return seconds, done.stdout


def command_env(prefect_home: Path) -> dict[str, str]:
    """The environment of a command as a user runs it: no Prefect API given, so the command starts its own."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PREFECT_HOME": str(prefect_home)}


def seed_process(folder: Path, train: Sequence[Month], val: Month, env: Mapping[str, str]) -> tuple[float, dict[str, Any]]:
    """The seed path's whole process (:mod:`benchmarks.seed_process`): seconds, and its rows and RMSEs."""
    seconds, out = run_python(["-m", "benchmarks.seed_process", str(folder), str(val), *map(str, train)], env)
    return seconds, json.loads(out)


def train_command(
    folder: Path, train: Sequence[Month], val: Month, output: Path, env: Mapping[str, str], *flags: str
) -> tuple[float, dict[str, Any]]:
    """``taxi-pipeline train`` as a subprocess: its wall time, and its ``metrics.json`` (``seconds``: the flow's)."""
    months_flag = ",".join(map(str, train))
    args = ["-m", "pipeline.cli", "train", "--source", str(folder), "--train-months", months_flag, "--val-month", str(val)]
    seconds, _ = run_python([*args, "--output", str(output), *flags], env)
    return seconds, json.loads((output / "metrics.json").read_text())
