"""The chunk statistics cache: exact round trips, bad entries as misses, concurrent writers, bounds, the CLI, a warm run."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.core.config import TrainConfig, parse_size
from pipeline.core.features import FeatureSpec
from pipeline.core.months import Month
from pipeline.core.stats import Packed, Stats
from pipeline.edge import chunks, reader, stats_cache
from pipeline.edge.sources import month_filename
from pipeline.edge.stats_cache import CorruptEntry, StatsCache, decode, encode
from tests.conftest import read_log_messages, read_task_runs
from tests.flows.test_flow import _without_timings

SPEC = FeatureSpec(numeric=("trip_distance",))
FOLDS, SEED = 3, 7


@pytest.fixture(scope="module")
def chunk(months_dir: Path) -> tuple[reader.MonthPlan, reader.Chunk]:
    plan = reader.locate(str(months_dir), "yellow", Month(2023, 1), SPEC.columns())
    return plan, reader.plan(plan.layout, 20_000)[0]


@pytest.fixture(scope="module")
def computed(chunk: tuple[reader.MonthPlan, reader.Chunk]) -> Packed:
    return chunks.chunk_statistics(*chunk, SPEC, FOLDS, SEED)


def _key(chunk: tuple[reader.MonthPlan, reader.Chunk]) -> str:
    return chunks.cache_key(*chunk, SPEC, FOLDS, SEED)


def _assert_identical(a: Any, b: Any) -> None:
    """Field by field, to the bit: dtype, shape and bytes; object arrays as the same Python ints; a dataclass inside, alike."""
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        assert type(x) is type(y), field.name
        if dataclasses.is_dataclass(x):
            _assert_identical(x, y)
        elif isinstance(x, np.ndarray) and x.dtype == object:
            assert x.shape == y.shape and [type(v) for v in y.ravel()] == [int] * y.size and list(x.ravel()) == list(y.ravel())
        elif isinstance(x, np.ndarray):
            assert (x.dtype, x.shape, x.tobytes()) == (y.dtype, y.shape, y.tobytes()), field.name
        else:
            assert x == y, field.name


def test_an_entry_gives_back_the_computed_statistics_bit_for_bit_and_is_compact(computed, chunk, tmp_path):
    def changed(**fields: Any) -> Packed:
        return dataclasses.replace(computed, rest=dataclasses.replace(computed.rest, **fields))

    huge = changed(sum_micros2=np.array([2**70 + 3, 2**64, -(2**65)], dtype=object))  # beyond int64
    negative_zero = computed.rest.sum_x.copy()
    negative_zero[0, 0, 5] = -0.0  # a pair with no rows but a -0.0 sum must come back as -0.0
    with_levels = chunks.chunk_statistics(*chunk, FeatureSpec.of("PU_DO,trip_distance:log8,hour"), FOLDS, SEED)
    assert with_levels.cells.size > 1_000  # counts per level and pair, as cells
    for stats in (computed, huge, changed(sum_x=negative_zero), with_levels):
        _assert_identical(stats, decode(encode(stats, "k"), "k", Packed))

    cache = StatsCache(str(tmp_path))
    cache.put(_key(chunk), computed)
    _assert_identical(computed, cache.get(_key(chunk)))
    (entry,) = cache.entries()
    dense = sum(a.nbytes for a in (computed.rest.count, computed.rest.sum_micros, computed.rest.sum_x))
    assert entry.size < dense / 10  # 20k rows populate a few thousand of the 70k pairs


@dataclasses.dataclass(frozen=True)
class _Counters:
    """A dataclass with the kinds of field Stats may grow: every one must come back as it was."""

    count: np.ndarray
    exact: np.ndarray
    rows_read: int
    dropped: np.int64
    share: float
    small: np.ndarray


def test_fields_of_any_kind_round_trip_so_new_stats_fields_need_no_change_here():
    count = np.zeros((2, 266 * 266), dtype=np.int32)
    count[1, [3, 70_000]] = [4, 9]
    value = _Counters(count, np.array([[1, 2**80]], dtype=object), 2**66, np.int64(-5), 0.1 + 0.2, np.arange(6.0).reshape(2, 3))
    _assert_identical(value, decode(encode(value, "k"), "k", _Counters))
    with pytest.raises(CorruptEntry, match="fields"):
        decode(encode(value, "k"), "k", Stats)


def _corruptions(computed: Packed, key: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    whole = encode(computed, key)
    with monkeypatch.context() as patched:
        patched.setattr(stats_cache, "FORMAT", "taxi-pipeline-stats/0")
        old_format = encode(computed, key)
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    return {
        "torn": whole[: len(whole) // 2],
        "flipped byte": bytes(flipped),
        "garbage": os.urandom(4096),
        "empty": b"",
        "old format": old_format,
        "another key": encode(computed, "another"),
    }


def test_a_torn_garbage_outdated_or_foreign_entry_is_a_miss_recomputed_and_replaced(computed, chunk, tmp_path, monkeypatch, caplog):
    key = _key(chunk)
    for name, data in _corruptions(computed, key, monkeypatch).items():
        location = tmp_path / name.replace(" ", "-")
        location.mkdir()
        (location / f"{key}.npz").write_bytes(data)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=stats_cache.__name__):
            value, hit = chunks.cached_statistics(str(location), *chunk, SPEC, FOLDS, SEED)
        assert not hit, name
        _assert_identical(computed, value)
        assert len([r for r in caplog.records if "bad entry" in r.getMessage()]) == 1, name
        assert chunks.cached_statistics(str(location), *chunk, SPEC, FOLDS, SEED)[1], name  # replaced by a valid entry


def test_any_flipped_byte_is_refused_or_harmless(computed):
    """A damaged entry never decodes to other statistics: each flip is caught (CRCs, headers) or hits bytes nothing reads."""
    whole = encode(computed, "k")
    rng = np.random.default_rng(0)
    positions = {*range(64), *range(len(whole) - 128, len(whole)), *rng.integers(0, len(whole), 200).tolist()}
    refused = 0
    for position in sorted(positions):
        damaged = bytearray(whole)
        damaged[position] ^= 0x5A
        try:
            _assert_identical(computed, decode(bytes(damaged), "k", Packed))
        except CorruptEntry:
            refused += 1
    assert refused > len(positions) / 2  # about a quarter land in zip header fields nothing checks (times, attributes)


_WRITER = """
import sys
from pathlib import Path
from pipeline.core.stats import Packed
from pipeline.edge.stats_cache import StatsCache, decode
location, key, source = sys.argv[1:]
value = decode(Path(source).read_bytes(), key, Packed)
cache = StatsCache(location)
for _ in range(30):
    cache.put(key, value)
"""


def test_two_processes_writing_one_key_leave_one_whole_entry_and_readers_never_see_a_torn_one(computed, chunk, tmp_path, caplog):
    key, location = _key(chunk), tmp_path / "shared"
    source = tmp_path / "source.npz"
    source.write_bytes(encode(computed, key))
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(location), key, str(source)]) for _ in range(2)]
    cache, reads = StatsCache(str(location)), 0
    with caplog.at_level(logging.WARNING, logger=stats_cache.__name__):
        while any(w.poll() is None for w in writers):
            reads += cache.get(key) is not None
    assert [w.wait() for w in writers] == [0, 0]
    assert not caplog.records  # no read ever met a torn entry
    assert reads > 0
    assert sorted(p.name for p in location.iterdir()) == [f"{key}.npz"]  # no temporary file left behind
    _assert_identical(computed, cache.get(key))


def _fill(cache: StatsCache, value: Packed, ages: list[float], now: float) -> list[str]:
    """One entry per age (seconds since last use), oldest first; their keys."""
    keys = [f"entry-{i}" for i in range(len(ages))]
    for key, age in zip(keys, ages):
        cache.put(key, value)
        os.utime(cache._path(key), (now - age, now - age))
    return keys


def test_pruning_by_size_then_age_keeps_the_most_recently_used(computed, tmp_path):
    cache, now = StatsCache(str(tmp_path)), time.time()
    keys = _fill(cache, computed, [5000, 4000, 3000, 2000, 1000], now)
    size = cache.entries()[0].size
    assert cache.get(keys[0]) is not None  # a hit makes the oldest the most recently used
    pruned = cache.prune(max_bytes=3 * size, now=now)
    assert (pruned.removed, pruned.freed, pruned.left.entries, pruned.left.bytes) == (2, 2 * size, 3, 3 * size)
    assert {Path(e.path).stem for e in cache.entries()} == {keys[0], keys[3], keys[4]}
    pruned = cache.prune(older_than=1500, now=now)
    assert {Path(e.path).stem for e in cache.entries()} == {keys[0], keys[4]} and pruned.removed == 1
    assert cache.clear().removed == 2 and cache.usage().entries == 0


def test_the_entries_a_run_is_about_to_read_are_pruned_last(computed, tmp_path):
    cache, now = StatsCache(str(tmp_path)), time.time()
    keys = _fill(cache, computed, [5000, 4000, 3000], now)
    assert cache.keys() == set(keys)  # one listing tells a run which chunks it need not compute
    size = cache.entries()[0].size
    pruned = cache.prune(max_bytes=2 * size, now=now, in_use={keys[0]})
    assert pruned.removed == 1 and cache.keys() == {keys[0], keys[2]}  # the oldest is in use: the next oldest goes


def test_an_fsspec_memory_location_works_like_a_folder(computed, chunk):
    location = f"memory://stats-{uuid.uuid4().hex}/cache"
    assert stats_cache.resolve(location) == location  # URLs go to workers as given
    value, hit = chunks.cached_statistics(location, *chunk, SPEC, FOLDS, SEED)
    assert not hit
    again, hit = chunks.cached_statistics(location, *chunk, SPEC, FOLDS, SEED)
    assert hit
    _assert_identical(value, again)
    usage = StatsCache(location).usage()
    assert usage.entries == 1 and usage.bytes > 0 and usage.oldest == usage.newest
    assert StatsCache(location).prune(max_bytes=0).removed == 1 and StatsCache(location).entries() == []


def test_sizes_ages_and_the_default_location(monkeypatch, tmp_path):
    assert [parse_size(s) for s in ("123", "500MB", "2GB", "1.5KiB")] == [123, 500 * 10**6, 2 * 10**9, 1536]
    assert [stats_cache.parse_age(s) for s in ("30d", "12h", "90m", "45s", "2w")] == [30 * 86400, 12 * 3600, 5400, 45, 14 * 86400]
    assert stats_cache.resolve(None, tmp_path / "months") == str(tmp_path / "months" / "stats")  # in the run's month cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert stats_cache.resolve(None) == str(tmp_path / "xdg" / "taxi-pipeline" / "stats")
    assert stats_cache.resolve("s3://bucket/stats", tmp_path) == "s3://bucket/stats"


@pytest.fixture
def narrow_console(monkeypatch):
    """The CLI's consoles 30 columns wide, as a narrow terminal: they take their width when created, so the
    ``COLUMNS`` of one command's environment cannot widen them; what names a path must not wrap at any width."""
    from pipeline.cli import common

    for console in (common.out, common.err):
        monkeypatch.setattr(console, "_width", 30)


def test_cache_info_prune_and_clear_commands(computed, tmp_path, narrow_console):
    cache, now = StatsCache(str(tmp_path / "stats")), time.time()
    _fill(cache, computed, [90 * 86400, 40 * 86400, 3600, 60], now)
    size = cache.entries()[0].size
    runner = CliRunner()
    where = ["--stats-cache", str(tmp_path / "stats")]

    info = runner.invoke(cli, ["cache", "info", *where])
    assert info.exit_code == 0, info.output
    assert (
        f"location: {tmp_path / 'stats'}\n" in info.output
        and re.search(r"entries\s+│\s+4\s+│", info.output)
        and stats_cache.human_size(4 * size) in info.output
    )

    pruned = runner.invoke(cli, ["cache", "prune", *where, "--older-than", "30d"])
    assert pruned.exit_code == 0 and f"removed 2 entries ({stats_cache.human_size(2 * size)})" in pruned.output
    pruned = runner.invoke(cli, ["cache", "prune", *where, "--max-size", str(size)])
    assert pruned.exit_code == 0 and "removed 1 entry" in pruned.output and "1 entry, " in pruned.output
    assert [Path(e.path).stem for e in cache.entries()] == ["entry-3"]  # the newest is kept

    bad = runner.invoke(cli, ["cache", "prune", *where, "--max-size", "5XB"])
    assert bad.exit_code == 2 and "--max-size" in bad.output and "'5XB'" in bad.output
    cleared = runner.invoke(cli, ["cache", "clear", *where])
    assert cleared.exit_code == 0 and "removed 1 entry" in cleared.output and "0 entries, 0 B left" in cleared.output


def _chunk_states(flow_run_id: str) -> list[str]:
    runs = read_task_runs(flow_run_id, expected=0, timeout=0)
    deadline = time.monotonic() + 30
    while any(r.state is None or not r.state.is_final() for r in runs) and time.monotonic() < deadline:
        time.sleep(0.5)
        runs = read_task_runs(flow_run_id, expected=0, timeout=0)
    return sorted(r.state.name for r in runs if r.name.startswith("chunk-stats"))


def _cache_line(flow_run_id: str) -> str:
    """The run's statistics cache line as its Prefect API stored it, from ``H of C chunks``: what it read and from how many.

    Read from the API, not from captured logging: Prefect configures its loggers during a run (they may stop
    propagating to the root logger, where caplog listens), and the terminal wraps long lines.
    """
    deadline = time.monotonic() + 60
    while True:  # logs reach the API in batches, shortly after the run
        lines = [message for message in read_log_messages(flow_run_id) if "chunks read from it" in message]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (line,) = lines
    return line.split("; ", 1)[1].split(",", 1)[0]


@pytest.mark.slow
@pytest.mark.cluster
def test_a_rerun_reads_every_chunk_from_the_cache_until_its_month_file_changes(months_dir, prefect_api_url, tmp_path):
    from pipeline.cluster import ClusterSpec
    from pipeline.run import train

    folder, location = tmp_path / "months", tmp_path / "stats"
    shutil.copytree(months_dir, folder)
    config = TrainConfig(
        source=str(folder),
        train_months=["2023-01"],
        val_month="2023-02",
        output=tmp_path / "out",
        folds=3,
        alphas=[0.1, 1.0],
        chunk_rows=20_000,
        stats_cache=str(location),
    )
    spec = ClusterSpec(n_workers=1, dashboard_address=":0")
    cold = train(config, spec).to_dict()
    assert _cache_line(cold["flow_run_id"]) == "0 of 4 chunks read from it"
    plan = reader.locate(str(folder), "yellow", Month(2023, 1), config.feature_spec().columns())
    january = {chunks.cache_key(plan, part, config.feature_spec(), 3, config.seed) for part in reader.plan(plan.layout, 20_000)}
    warm = train(config, spec).to_dict()
    assert _cache_line(warm["flow_run_id"]) == "4 of 4 chunks read from it"
    path = folder / month_filename("yellow", Month(2023, 2))
    path.write_bytes(path.read_bytes())  # same content, new mtime: a new identity
    damaged = location / f"{sorted(january)[0]}.npz"
    damaged.write_bytes(b"garbage")  # listed as there, read as a miss: recomputed and replaced by the task that reads it
    rewritten = train(config, spec).to_dict()
    assert _cache_line(rewritten["flow_run_id"]) == "2 of 4 chunks read from it"  # 2023-01's two, as listed
    uncached = train(config.model_copy(update={"cache": False}), spec).to_dict()

    assert _chunk_states(cold["flow_run_id"]) == ["Completed"] * 4
    assert _chunk_states(warm["flow_run_id"]) == []  # every month's chunks listed in the cache: no chunk task at all
    assert _chunk_states(rewritten["flow_run_id"]) == ["Completed", "Completed"]  # only the rewritten month's
    assert _chunk_states(uncached["flow_run_id"]) == ["Completed"] * 4  # --no-cache reads again
    assert _without_timings(cold) == _without_timings(warm) == _without_timings(rewritten) == _without_timings(uncached)
    cache = StatsCache(str(location))
    assert cache.usage().entries == 6  # 2023-02's old entries stay until pruned
    assert all(cache.get(key) is not None for key in january)  # the damaged entry was replaced by a whole one
