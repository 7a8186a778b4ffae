"""Damaged month files: refused in one line where page checksums exist, counted and warned about where not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import render, screening, stats
from pipeline.core.features import FeatureSpec
from pipeline.core.months import Month, parse_months
from pipeline.core.results import RunResult
from pipeline.edge import chunks, reader
from pipeline.edge.sources import month_filename
from pipeline.edge.synth import synth_month, write_months
from pipeline.errors import PipelineError
from tests.cli.test_cli import _train
from tests.conftest import DaskProcesses

FEB = Month(2023, 2)
ROWS, GROUP = 8_000, 4_000
DAMAGE = 4096  # bytes overwritten: 512 int64 timestamps


def _write(folder: Path, checksums: bool) -> None:
    """Three months as plain, uncompressed pages: damage there decodes silently, as the issue saw.

    (In snappy or dictionary pages random bytes mostly fail loudly already.)
    """
    folder.mkdir(parents=True, exist_ok=True)
    for month in parse_months("2023-01:2023-03"):
        table = synth_month(month, ROWS, seed=0)
        options = {"compression": "none", "use_dictionary": False, "write_page_checksum": checksums}
        pq.write_table(table, folder / month_filename("yellow", month), row_group_size=GROUP, **options)


def _damage(path: Path, row_group: int = 1, column: str = "tpep_pickup_datetime") -> None:
    """Overwrite 4 KB inside the first page (dictionary, else data) of ``column`` in ``row_group``; the footer stays intact."""
    meta = pq.ParquetFile(path).metadata.row_group(row_group)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    start = (chunk.dictionary_page_offset or chunk.data_page_offset) + 256  # past the page header (with statistics)
    data = bytearray(path.read_bytes())
    data[start : start + DAMAGE] = np.random.default_rng(13).integers(0, 256, DAMAGE, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _month_rows(folder: Path, month: Month) -> screening.MonthRows:
    spec = FeatureSpec()
    plan = reader.locate(str(folder), "yellow", month, spec.columns())
    parts = [chunks.chunk_statistics(plan, c, spec) for c in reader.plan(plan.layout, GROUP)]
    (counted,) = screening.of([month], [stats.combine(parts)])
    return counted


def test_synth_writes_page_checksums_so_damage_is_named_not_decoded(tmp_path: Path) -> None:
    for checksums in (True, False):
        (path,) = write_months(tmp_path / str(checksums), [FEB], ROWS, row_group_size=GROUP, checksums=checksums)
        _damage(path, column="tpep_dropoff_datetime")
        layout = reader.inspect(path, FeatureSpec().columns())
        with pytest.raises(PipelineError) as info:
            reader.read(layout, reader.plan(layout, GROUP)[1])
        message = str(info.value)
        assert message.startswith(f"{path}: corrupt parquet data in row groups 1..1 (") and "\n" not in message
        assert ("CRC checksum verification failed" in message) is checksums
        reader.read(layout, reader.plan(layout, GROUP)[0])  # the undamaged row group still reads


def test_silent_damage_is_counted_and_its_month_flagged(tmp_path: Path) -> None:
    _write(tmp_path, checksums=False)
    clean = {m: _month_rows(tmp_path, m) for m in parse_months("2023-01:2023-03")}
    _damage(tmp_path / month_filename("yellow", FEB))
    damaged = _month_rows(tmp_path, FEB)  # no error: the page decoded as garbage

    assert damaged.rows_read == clean[FEB].rows_read == ROWS
    assert damaged.out_of_range_zones == clean[FEB].out_of_range_zones == 0
    extra = damaged.out_of_range_timestamps - clean[FEB].out_of_range_timestamps
    assert 500 <= extra <= DAMAGE // 8  # nearly every garbage pickup falls outside the month
    assert clean[FEB].rows_kept - damaged.rows_kept >= 500
    # each drop counted once here (no bad zones, every garbage row dropped): garbage times are not the duration filter's
    assert damaged.dropped_by_duration + damaged.out_of_range_timestamps == ROWS - damaged.rows_kept
    assert damaged.dropped_by_duration <= clean[FEB].dropped_by_duration
    for month in clean.values():  # generated months drop ~2.4%: zero, negative, sub-minute and multi-hour trips
        assert 0.015 < month.drop_rate < 0.035
    assert screening.unusual(list(clean.values())) == []

    months = [clean[Month(2023, 1)], damaged, clean[Month(2023, 3)]]
    (found,) = screening.unusual(months)
    assert found.month == damaged
    assert found.others_median == pytest.approx((clean[Month(2023, 1)].drop_rate + clean[Month(2023, 3)].drop_rate) / 2)
    line = render.drop_warning(found)
    assert line.startswith(f"month 2023-02 dropped {damaged.drop_rate:.2%} of its 8,000 rows, the other months' median ")
    assert f"{damaged.out_of_range_timestamps:,} with out-of-range timestamps" in line


def test_unusual_needs_both_the_ratio_and_the_margin() -> None:
    def month(index: int, dropped: int, read: int = 100_000) -> screening.MonthRows:
        return screening.MonthRows(Month(2023, index), read, read - dropped, dropped, 0, 0)

    # 0.1% vs 0.02%: five times the median but under a point above it; 4% vs 2%: a point above but only twice
    assert screening.unusual([month(1, 20), month(2, 100), month(3, 20)]) == []
    assert screening.unusual([month(1, 2_000), month(2, 4_000), month(3, 2_000)]) == []
    assert [u.month.month for u in screening.unusual([month(1, 2_000), month(2, 6_100), month(3, 2_000)])] == [Month(2023, 2)]
    assert screening.unusual([month(1, 2_000)]) == []  # nothing to compare with


def test_screening_counts_early_timestamps_and_unknown_zones(tmp_path: Path) -> None:
    table = synth_month(FEB, 1_000, seed=4)
    pickup = table["tpep_pickup_datetime"].to_numpy().copy()
    pickup[:3] = np.datetime64("2022-12-30T00:00:00", "us")  # a month early: out of range, and a month-long trip
    pu = table["PULocationID"].to_numpy().copy()
    pu[3:5] = 999
    changed = table.set_column(1, "tpep_pickup_datetime", pa.array(pickup, pa.timestamp("us"))).set_column(7, "PULocationID", pa.array(pu))
    counts = {}
    for name, version in (("base", table), ("changed", changed)):
        (tmp_path / name).mkdir()
        pq.write_table(version, tmp_path / name / month_filename("yellow", FEB))
        counts[name] = _month_rows(tmp_path / name, FEB)
    base, counted = counts["base"], counts["changed"]
    assert counted.rows_read == 1_000
    assert (base.out_of_range_zones, counted.out_of_range_zones) == (0, 2)
    assert counted.out_of_range_timestamps - base.out_of_range_timestamps == 3
    assert counted.dropped_by_duration == base.dropped_by_duration  # bad timestamps and unknown zones are counted there only
    assert base.rows_kept - counted.rows_kept == 5


def test_dropped_by_duration_counts_only_rows_with_good_timestamps_and_zones(tmp_path: Path) -> None:
    """As metrics.json documents it, against pandas: a month where some rows end before they start or lie in another month."""
    import pandas as pd

    table = synth_month(FEB, 4_000, seed=5)
    frame = table.to_pandas()
    pick, drop = frame["tpep_pickup_datetime"].to_numpy().copy(), frame["tpep_dropoff_datetime"].to_numpy().copy()
    drop[:40] = pick[:40] - np.timedelta64(5, "m")  # dropoff before pickup
    pick[40:70] = np.datetime64("2023-05-10T08:00:00", "us")  # months late, a long trip as well
    drop[70:90] = pick[70:90] + np.timedelta64(3, "h")  # good timestamps, too long: the duration filter's
    pu = frame["PULocationID"].to_numpy().copy()
    pu[90:100] = 999  # unknown zone
    damaged = table.set_column(1, "tpep_pickup_datetime", pa.array(pick, pa.timestamp("us")))
    damaged = damaged.set_column(2, "tpep_dropoff_datetime", pa.array(drop, pa.timestamp("us")))
    damaged = damaged.set_column(7, "PULocationID", pa.array(pu))
    pq.write_table(damaged, tmp_path / month_filename("yellow", FEB))
    counted = _month_rows(tmp_path, FEB)

    start, end = pd.Timestamp("2023-01-31"), pd.Timestamp("2023-03-02")  # the month widened by a day each side
    p, d = pd.Series(pick), pd.Series(drop)
    good_times = p.between(start, end) & d.between(start, end) & (d >= p)
    good_zones = pd.Series(pu).between(1, 265) & frame["DOLocationID"].between(1, 265)
    minutes = (d - p).dt.total_seconds() / 60
    assert counted.out_of_range_timestamps == int((~good_times).sum()) >= 70
    assert counted.dropped_by_duration == int((good_times & good_zones & ~minutes.between(1, 60)).sum()) >= 20


@pytest.mark.slow
@pytest.mark.cluster
def test_cli_trains_on_a_silently_damaged_month_but_warns(tmp_path: Path, prefect_api_url: str, one_worker: DaskProcesses) -> None:
    """With checksums the same damage is one line naming the file: test_synth_writes_page_checksums_... here, and
    end to end test_cli's damaged-page test (synth months carry CRCs), so no second run of the CLI here."""
    _write(tmp_path / "months", checksums=False)
    _damage(tmp_path / "months" / month_filename("yellow", FEB))
    args = ("--scheduler", one_worker.address, "--folds", "0")  # the session's worker: the cluster is not under test
    result = _train(tmp_path / "months", tmp_path / "out", *args, env={"PREFECT_API_URL": prefect_api_url})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    by_month = {m["month"]: m for m in metrics["months"]}
    assert list(by_month) == ["2023-01", "2023-02", "2023-03"]
    feb = by_month["2023-02"]
    assert feb["rows_read"] == ROWS and feb["out_of_range_timestamps"] >= 500 and feb["drop_rate"] > 0.07
    assert metrics["train_rows"] == by_month["2023-01"]["rows_kept"] + feb["rows_kept"]
    (warning,) = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert re.match(r"warning: month 2023-02 dropped \d+\.\d\d% of its 8,000 rows, the other months' median 2\.\d\d% ", warning)
    assert "WARNING" in result.stderr and "month 2023-02 dropped" in result.stderr  # the run log too


def test_months_round_trip_through_metrics_json_and_render_as_a_table() -> None:
    counted = (
        screening.MonthRows(Month(2023, 1), 10_000, 9_750, 240, 30, 12),
        screening.MonthRows(FEB, 8_000, 7_300, 690, 520, 0),
    )
    result = RunResult("linear", "yellow", (Month(2023, 1),), FEB, 1e-3, (), 9_750, 7_300, 7.1, 7.4, 1.0, "id", months=counted)
    document = json.loads(json.dumps(result.to_dict()))
    assert document["schema_version"] == 1
    assert document["months"][1] == {
        "month": "2023-02",
        "rows_read": 8_000,
        "rows_kept": 7_300,
        "dropped_by_duration": 690,
        "out_of_range_timestamps": 520,
        "out_of_range_zones": 0,
        "drop_rate": pytest.approx(0.0875),
    }
    assert RunResult.from_dict(document) == result
    assert "months" not in RunResult.from_dict({**document, "months": []}).to_dict()  # the field is absent when not counted
    assert render.month_rows(counted) == [
        ("2023-01", "10,000", "9,750", "2.50%", "240", "30", "12"),
        ("2023-02", "8,000", "7,300", "8.75%", "690", "520", "0"),
    ]
    assert "| 2023-02 | 8,000 | 7,300 | 8.75% | 690 | 520 | 0 |" in render.markdown(result)
