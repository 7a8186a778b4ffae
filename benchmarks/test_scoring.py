"""Batch scoring: the linear kernel on one core, the whole flow beside reading its months, a chunk's memory.

The model is the linear one with ``trip_distance`` (the retraining default's
winner), solved in this process from the statistics of the first generated
month and saved with its training counts, so the flow draws the drift report
as a trained model's run does; the next months are scored.

- The kernel: :meth:`Model.predict_codes` on a month's zone codes and numeric
  matrix, decoded before the clock starts, on one core. The issue's target,
  20M rows/s per core, is asserted as such (it is an in-memory kernel, not
  orchestration); the 4-column parquet decode of the same month is beside it.
- The flow: ``score_flow`` over 3 months on a LocalCluster of 2 workers, against
  pyarrow reading the same months' needed columns in this process. The issue's
  target is flow time at most 2× read time; see ``FLOW_OVER_READ`` for what is
  asserted instead and why.
- Memory: peak of one ``score-chunk`` task on a quarter, a half and all of a
  month, each in a fresh process (:mod:`benchmarks.scoring_memory`, measured as
  :mod:`benchmarks.chunk_memory` does), held to at most linear growth.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.chunk_memory import CLEAR_REFS, memory_figures, probe_peaks
from benchmarks.common import ALPHA, CHUNK_ROWS, TAXI, best_of, decode, month_path, months
from benchmarks.conftest import QUICK_FLOORS, Bench
from pipeline.cluster import ClusterSpec
from pipeline.core import solve, stats
from pipeline.core.config import ScoreConfig
from pipeline.core.features import FeatureSpec, numeric_matrix, zone_codes
from pipeline.core.model import Model
from pipeline.core.months import Month
from pipeline.core.schema import DO, PU
from pipeline.edge import reader
from pipeline.edge.baseline import save_train_counts
from pipeline.edge.chunks import chunk_statistics
from pipeline.edge.model_files import load_model, save_model
from pipeline.edge.predictions import PART_OPTIONS, score_chunk
from pipeline.flows.score import score_flow

SPEC = FeatureSpec(numeric=("trip_distance",))
#: The issue's target for the linear kernel, rows per second on one core, printed beside the figure (83M measured
#: at 1M-row months under load). Asserted: half of it, so noise does not fail it, at either scale.
GOAL_KERNEL_ROWS_PER_SECOND = 20e6
KERNEL_ROWS_PER_SECOND = 10e6
#: At most: score_flow's own seconds (cluster start excluded) over pyarrow reading the
#: same months' needed columns in this process. The issue's target is 2×, which is below
#: what any scoring can cost here: reading the columns plus merely encoding the parts the
#: flow wrote (two at a time, no prediction, no file, no orchestration) measures 2.1-2.4×
#: the read (``read_and_write_over_read``). The flow measured 32-40× at 1M-row months (flow
#: 2.15-2.32 s on a LocalCluster started for it, read 0.058-0.070 s; was 39-64×), 11-16× on
#: the local stack's warm cluster; the rest is a fixed second of Prefect and Dask (a cold
#: worker's first task, task runs, the report's chart and artifacts). The floor is ~3× the
#: highest measured: it catches a flow several times slower.
FLOW_OVER_READ = 120.0
QUICK_FLOW_OVER_READ = 1000.0
#: Train on the first generated month, score the next three.
SCORED_MONTHS = 3
QUARTERS = (1, 2, 4)


def _quick(bench: Bench) -> bool:
    return bench.floors == QUICK_FLOORS


def _scored() -> list[Month]:
    return months(1 + SCORED_MONTHS)[1:]


@pytest.fixture(scope="module")
def model_dir(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Linear model with ``trip_distance``, solved from the first month's statistics, saved as training saves one."""
    (train,) = months(1)
    plan = reader.locate(str(bench.folder), TAXI, train, SPEC.columns())
    pooled = stats.combine([chunk_statistics(plan, chunk, SPEC) for chunk in reader.plan(plan.layout, CHUNK_ROWS)])
    weights = solve.solve(pooled, ALPHA)
    metrics = {"train_months": [str(train)], "train_rows": int(pooled.rows), "train_rmse": solve.rmse(weights, pooled)}
    folder = tmp_path_factory.mktemp("scoring-model")
    save_model(Model(weights, SPEC, {"metrics": metrics}), folder)
    save_train_counts(pooled.total().count[0], folder)  # the drift report's baseline
    return folder


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Model:
    """The model as the flow's tasks get it: read back from its folder."""
    return load_model(model_dir)


@pytest.mark.usefixtures("one_core")
def test_linear_scoring_per_core(benchmark, bench, model):
    """``predict_codes`` on a month's decoded codes and matrix, beside the month's parquet decode."""
    month = _scored()[0]
    layout = reader.locate(str(bench.folder), TAXI, month, SPEC.columns()).layout
    table = reader.read(layout, reader.plan(layout, layout.rows)[0])
    pu, do, x = zone_codes(table.column(PU)), zone_codes(table.column(DO)), numeric_matrix(table, SPEC.numeric)
    seconds, predicted = best_of(lambda: model.predict_codes(pu, do, x), rounds=20, benchmark=benchmark)
    path = month_path(bench.folder, month)
    decode_seconds, decoded = best_of(lambda: decode(path), rounds=5)
    # the predict's own inputs, as stored: the zones and the numeric column
    physical = [layout.mapping[c] for c in (PU, DO, *SPEC.numeric)]
    inputs_seconds, _ = best_of(lambda: pq.read_table(path, columns=physical), rounds=5)
    rows = table.num_rows
    assert decoded.num_rows == rows == predicted.shape[0]
    assert np.array_equal(predicted, model.predict(table))
    rows_per_second = rows / seconds
    benchmark.extra_info.update(
        rows=rows,
        rows_per_second=rows_per_second,
        predict_seconds=seconds,
        decode_seconds=decode_seconds,
        decode_rows_per_second=rows / decode_seconds,
        predict_over_decode=seconds / decode_seconds,
        inputs_decode_seconds=inputs_seconds,
        predict_over_inputs_decode=seconds / inputs_seconds,
        headline=(
            f"linear scoring on one core: {rows_per_second / 1e6:.0f}M rows/s "
            f"(goal {GOAL_KERNEL_ROWS_PER_SECOND / 1e6:.0f}M, asserted at least {KERNEL_ROWS_PER_SECOND / 1e6:.0f}M)"
        ),
    )
    assert rows_per_second >= KERNEL_ROWS_PER_SECOND


@pytest.mark.slow
def test_score_flow_vs_read(benchmark, bench, prefect_api_url, model, model_dir, tmp_path):
    """``score_flow`` over 3 months on 2 workers, beside reading those months' needed columns in this process."""
    scored = _scored()
    output = tmp_path / "scored"
    wall_seconds, result = best_of(
        lambda: score_flow(
            ScoreConfig(months=f"{scored[0]}:{scored[-1]}", output=str(output), model=str(model_dir), source=str(bench.folder)),
            ClusterSpec(n_workers=2, dashboard_address=":0"),
        ),
        benchmark=benchmark,
    )
    paths = [month_path(bench.folder, m) for m in scored]
    physical = [list(reader.inspect(p, SPEC.columns()).mapping.values()) for p in paths]
    read_seconds, tables = best_of(lambda: [pq.read_table(p, columns=c) for p, c in zip(paths, physical)], rounds=5)
    input_rows = sum(t.num_rows for t in tables)
    output_rows = sum(pq.read_metadata(p).num_rows for p in output.glob("month=*/*.parquet"))
    assert result.rows == output_rows == input_rows

    # the flow's work without the flow: every chunk task body, one after another in this process
    plans = [reader.locate(str(bench.folder), TAXI, m, SPEC.columns()) for m in scored]
    chunks = [(plan, chunk) for plan in plans for chunk in reader.plan(plan.layout, CHUNK_ROWS)]
    parts = [tmp_path / "in-process" / f"part-{index:05d}.parquet" for index in range(len(chunks))]
    work_seconds, _ = best_of(lambda: [score_chunk(p, c, model, part) for (p, c), part in zip(chunks, parts)], rounds=3)
    # the least any scoring costs beside the read: encoding the parts the flow wrote, to memory, two at a
    # time as the two workers do (and as the read above uses both cores)
    written = [pq.read_table(output / f"month={m}") for m in scored]
    with ThreadPoolExecutor(2) as pool:
        write_seconds, _ = best_of(
            lambda: list(pool.map(lambda t: pq.write_table(t, pa.BufferOutputStream(), **PART_OPTIONS), written)), rounds=3
        )

    ratio = result.seconds / read_seconds
    benchmark.extra_info.update(
        months=len(scored),
        workers=2,
        rows=input_rows,
        flow_seconds=result.seconds,
        wall_seconds=wall_seconds,
        rows_per_second=input_rows / result.seconds,
        read_seconds=read_seconds,
        read_rows_per_second=input_rows / read_seconds,
        flow_over_read=ratio,
        chunk_work_seconds=work_seconds,
        flow_over_chunk_work=result.seconds / work_seconds,
        write_seconds=write_seconds,
        read_and_write_over_read=(read_seconds + write_seconds) / read_seconds,
    )
    assert ratio <= (QUICK_FLOW_OVER_READ if _quick(bench) else FLOW_OVER_READ)


def _target_rows(bench: Bench, quarters: int) -> int:
    return bench.rows * quarters // 4


@pytest.fixture(scope="module")
def peaks(bench, model_dir, pytestconfig, tmp_path_factory) -> dict[int, dict[str, float]]:
    """Quarters of a month to the probe's figures, one fresh process each."""
    if not CLEAR_REFS.exists():
        pytest.skip("the peak probe needs Linux's /proc/self/clear_refs")
    month = _scored()[0]
    parts = tmp_path_factory.mktemp("scoring-memory")
    arguments = {
        q: [str(bench.folder), str(month), str(_target_rows(bench, q)), str(model_dir), str(parts / f"part-{q}.parquet")] for q in QUARTERS
    }
    return probe_peaks("benchmarks.scoring_memory", arguments, pytestconfig.rootpath)


@pytest.mark.usefixtures("one_core")
@pytest.mark.parametrize("quarters", QUARTERS)
def test_scoring_memory(benchmark, bench, model, peaks, quarters, tmp_path):
    """A chunk's peak against its rows, and the same task timed here on one core.

    A peak holds a part that does not grow with the chunk (Arrow's and the parquet
    writer's first use, the allocator's arenas: tens of MB), so ``bytes_per_row``
    falls as chunks grow; ``marginal_bytes_per_row`` is what a further row costs.
    """
    month = _scored()[0]
    plan = reader.locate(str(bench.folder), TAXI, month, SPEC.columns())
    chunk = reader.plan(plan.layout, _target_rows(bench, quarters))[0]
    seconds, counts = best_of(lambda: score_chunk(plan, chunk, model, tmp_path / "part.parquet"), rounds=3, benchmark=benchmark)
    probe, smallest = peaks[quarters], peaks[min(QUARTERS)]
    figures = memory_figures(probe, smallest)
    growth = figures["growth_over_linear"]
    benchmark.extra_info.update(rows=chunk.rows, rows_per_second=chunk.rows / seconds, part_bytes=probe["part_bytes"], **figures)
    assert probe["rows"] == probe["scored_rows"] == chunk.rows == counts.rows
    assert growth <= bench.floors.memory_growth
