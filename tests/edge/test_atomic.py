"""Atomic writes: readers see the old content or the new, never a torn file; no temporary files are left behind."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from pipeline.edge.atomic import atomic_path, write_bytes
from tests.conftest import umask


def _writing(data: bytes) -> Callable[[IO[bytes]], None]:
    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    return write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Boom(Exception):
    pass


def test_success_replaces_the_content(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old content, longer than the new one")
    write_bytes(target, _writing(b"new"))
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_path_yields_an_empty_sibling_and_renames_it(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "table.parquet"  # parents are created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert tmp.exists() and tmp.stat().st_size == 0
        assert not target.exists()  # nothing visible until the block succeeds
        tmp.write_bytes(b"payload")
    assert target.read_bytes() == b"payload"
    assert not tmp.exists()
    assert os.listdir(target.parent) == ["table.parquet"]


def test_a_failure_in_atomic_path_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_bytes(b'{"old": true}')
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_bytes(b'{"new": tr')
        raise Boom
    assert target.read_bytes() == b'{"old": true}'
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_a_failure_in_write_bytes_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.npz"
    target.write_bytes(b"old")

    def half(fh: IO[bytes]) -> None:
        fh.write(b"x" * 100_000)
        fh.flush()
        raise Boom("disk full")

    with pytest.raises(Boom, match="disk full"):
        write_bytes(target, half)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.npz"]


def test_an_interrupt_also_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "f"

    def interrupted(fh: IO[bytes]) -> None:
        fh.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_bytes(target, interrupted)
    assert os.listdir(tmp_path) == []


def test_a_failure_with_no_old_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Boom), atomic_path(tmp_path / "new.txt"):
        raise Boom
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_mode_honours_the_umask(tmp_path: Path, mask: int, expected: int) -> None:
    with umask(mask):
        write_bytes(tmp_path / "written", _writing(b"x"))
        with atomic_path(tmp_path / "renamed") as tmp:
            tmp.write_bytes(b"y")
        # Replacing a file of another mode gives the umask's mode, as creating it anew would.
        (tmp_path / "replaced").write_bytes(b"old")
        os.chmod(tmp_path / "replaced", 0o600 if expected != 0o600 else 0o644)
        write_bytes(tmp_path / "replaced", _writing(b"new"))
    assert _mode(tmp_path / "written") == expected
    assert _mode(tmp_path / "renamed") == expected
    assert _mode(tmp_path / "replaced") == expected


def test_concurrent_writers_leave_one_complete_payload(tmp_path: Path) -> None:
    target = tmp_path / "shared.bin"
    size, writes = 64 * 1024, 20
    payloads = {(w, i): bytes([w * writes + i]) * size for w in range(2) for i in range(writes)}
    complete = set(payloads.values())
    start = threading.Barrier(3)
    done = threading.Event()
    errors: list[BaseException] = []
    reads: list[int] = [0]
    torn: list[bytes] = []

    def writer(w: int) -> None:
        try:
            start.wait()
            for i in range(writes):
                payload = payloads[(w, i)]

                def write(fh: IO[bytes], payload: bytes = payload) -> None:
                    for offset in range(0, size, 4096):  # many small writes: a torn file would show
                        fh.write(payload[offset : offset + 4096])

                write_bytes(target, write)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        start.wait()
        while not done.is_set():
            try:
                content = target.read_bytes()
            except FileNotFoundError:
                continue
            reads[0] += 1
            if content not in complete:
                torn.append(content[:16] + b"..." + content[-16:])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    watcher = threading.Thread(target=reader)
    for t in (*threads, watcher):
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()

    assert errors == []
    assert target.read_bytes() in complete
    assert os.listdir(tmp_path) == ["shared.bin"]
    # Whatever a concurrent reader saw was some writer's whole payload.
    assert reads[0] > 0 and torn == []
