"""Damaged month files: read in full or refused with one PipelineError line naming the file; never a traceback or a hang.

Seeded byte flips in data pages, footer and magic, truncations and random footers of one small
month. A flip the file cannot detect may decode to other numbers: that counts as readable.
``TAXI_PROPERTY_SCALE=20`` runs 20 times the cases.
"""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.core.features import FeatureSpec
from pipeline.core.months import Month, parse_months
from pipeline.edge import chunks, reader
from pipeline.edge.sources import month_filename
from pipeline.edge.synth import write_months
from pipeline.errors import PipelineError
from tests.cli.test_cli import _one_error_line, _train

SCALE = int(os.environ.get("TAXI_PROPERTY_SCALE", "1"))
MONTH = Month(2023, 1)
SPEC = FeatureSpec(numeric=("trip_distance",))
#: Seconds one case may take before the run is stopped with every thread's traceback.
HANG = 30


@pytest.fixture(scope="module")
def month_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 3,000-row month in 6 row groups (~146 kB, footer ~15 kB)."""
    [path] = write_months(tmp_path_factory.mktemp("fuzz-source"), [MONTH], 3_000, row_group_size=500)
    assert pq.ParquetFile(path).metadata.num_row_groups == 6
    return path.read_bytes()


def _footer_start(data: bytes) -> int:
    return len(data) - 8 - int.from_bytes(data[-8:-4], "little")


def _flip_data(data: bytes, rng: np.random.Generator) -> bytes:
    damaged = bytearray(data)
    for _ in range(rng.integers(1, 8)):
        damaged[rng.integers(4, _footer_start(data))] ^= 1 << int(rng.integers(8))
    return bytes(damaged)


def _overwrite_footer(data: bytes, rng: np.random.Generator) -> bytes:
    damaged = bytearray(data)
    for _ in range(rng.integers(1, 6)):
        damaged[rng.integers(_footer_start(data), len(data) - 8)] = int(rng.integers(256))
    return bytes(damaged)


def _flip_magic(data: bytes, rng: np.random.Generator) -> bytes:
    damaged = bytearray(data)
    damaged[int(rng.choice([0, 1, 2, 3, -4, -3, -2, -1]))] ^= 1 << int(rng.integers(8))
    return bytes(damaged)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: rng.integers(0, len(data))]


def _random_footer(data: bytes, rng: np.random.Generator) -> bytes:
    size = int(rng.integers(0, 2 * (len(data) - 8 - _footer_start(data))))
    return data[: _footer_start(data)] + rng.bytes(size) + size.to_bytes(4, "little") + b"PAR1"


def _read_everything(folder: Path) -> None:
    """What training does with a month: the footer, the plan, the statistics of every chunk."""
    plan = reader.locate(str(folder), "yellow", MONTH, SPEC.columns())
    for chunk in reader.plan(plan.layout, 1_000):
        chunks.chunk_statistics(plan, chunk, SPEC, folds=5, seed=1)


@contextmanager
def _hang_guard() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _outcomes(month_bytes: bytes, folder: Path, damage: Callable[[bytes, np.random.Generator], bytes], cases: int) -> list[str]:
    """``read`` or ``refused`` per case; anything else fails the test, naming the case and what escaped."""
    path = folder / month_filename("yellow", MONTH)
    rng = np.random.default_rng(13)
    outcomes = []
    for case in range(cases * SCALE):
        path.write_bytes(damage(month_bytes, rng))
        try:
            with _hang_guard():
                _read_everything(folder)
        except PipelineError as exc:
            message = str(exc)
            assert str(path) in message and "\n" not in message, f"case {case}: {message!r}"
            outcomes.append("refused")
        except Exception as exc:  # the point: nothing but PipelineError may escape
            pytest.fail(f"{damage.__name__} case {case}: {type(exc).__name__}: {exc}")
        else:
            outcomes.append("read")
    return outcomes


@pytest.mark.parametrize(
    ("damage", "cases", "always_refused"),
    [
        (_flip_data, 40, False),
        (_overwrite_footer, 200, False),
        (_flip_magic, 16, False),
        (_truncate, 25, True),
        (_random_footer, 20, True),
    ],
)
def test_damaged_months_are_read_or_refused_in_one_line(month_bytes, tmp_path, damage, cases, always_refused):
    outcomes = _outcomes(month_bytes, tmp_path, damage, cases)
    if always_refused:  # no prefix of a file, nor a footer of random bytes, is a readable month
        assert set(outcomes) == {"refused"}
    else:  # both outcomes occur, so the cases reach past the first check
        assert set(outcomes) == {"read", "refused"}


def test_a_column_name_that_is_not_utf8_is_refused_in_one_line(month_bytes, tmp_path):
    # pyarrow decodes column paths as it opens the file and raised UnicodeDecodeError.
    path = tmp_path / month_filename("yellow", MONTH)
    path.write_bytes(month_bytes.replace(b"PULocationID", b"PUL\xaacationID", 1))
    with pytest.raises(PipelineError, match=r"^\S+: corrupt or unreadable parquet file \(.*utf-8.*\)$") as info:
        _read_everything(tmp_path)
    assert str(path) in str(info.value)


def _footer_refused(data: bytes, path: Path) -> bool:
    path.write_bytes(data)
    try:
        reader.inspect(path, FeatureSpec().columns())
    except PipelineError:
        return True
    return False


@pytest.fixture(scope="module")
def cli_months(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-cli")
    write_months(folder, parse_months("2023-01:2023-03"), 3_000, row_group_size=500)
    return folder


@pytest.mark.parametrize("damage", [_random_footer, _overwrite_footer])
def test_the_cli_refuses_a_damaged_footer_with_exit_2_one_line_and_no_model(cli_months, tmp_path, damage):
    path = cli_months / month_filename("yellow", Month(2023, 2))
    intact = path.read_bytes()
    rng = np.random.default_rng(5)
    damaged = damage(intact, rng)
    while not _footer_refused(damaged, tmp_path / "probe.parquet"):  # one the footer check catches: no server starts
        damaged = damage(intact, rng)
    path.write_bytes(damaged)
    try:
        line = _one_error_line(_train(cli_months, tmp_path / "out", "--folds", "0"))
    finally:
        path.write_bytes(intact)
    assert line.startswith(f"error: {path}: ")
    assert not (tmp_path / "out").exists()
