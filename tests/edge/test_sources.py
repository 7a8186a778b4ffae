"""Month sources: local folders, a real local HTTP server that misbehaves on demand, memory://."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.months import Month, parse_months
from pipeline.edge import sources
from pipeline.edge.sources import (
    MonthFile,
    default_cache_dir,
    month_filename,
    resolve_month,
)
from pipeline.edge.synth import write_months
from pipeline.errors import PipelineError
from tests.cli.test_cli import _one_error_line, _train
from tests.conftest import DaskProcesses

JAN = Month(2023, 1)
FEB = Month(2023, 2)


def write_month(folder: Path, taxi: str = "yellow", month: Month = JAN, rows: int = 1000, seed: int = 0) -> Path:
    """A small TLC-like parquet file; different ``rows``/``seed`` give different bytes."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2023-01-01T00:00:00", "us") + rng.integers(0, 86_400_000_000, rows).astype("timedelta64[us]")
    table = pa.table(
        {
            "tpep_pickup_datetime": pa.array(start, pa.timestamp("us")),
            "tpep_dropoff_datetime": pa.array(start + np.timedelta64(600, "s"), pa.timestamp("us")),
            "PULocationID": pa.array(rng.integers(1, 266, rows), pa.int64()),
            "DOLocationID": pa.array(rng.integers(1, 266, rows), pa.int64()),
            "trip_distance": pa.array(rng.random(rows) * 10),
        }
    )
    path = folder / month_filename(taxi, month)
    pq.write_table(table, path)
    return path


def cached_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.rglob("*") if p.is_file())


# --- a real HTTP server on 127.0.0.1 ------------------------------------------------------


@dataclass
class Server:
    """State of the test server; tests flip the misbehaviour knobs between requests."""

    root: Path
    url: str = ""  # the source prefix, http://127.0.0.1:<port>/trip-data
    fail_first: int = 0  # answer 500 to the first N requests (any method)
    status: int | None = None  # answer this status to everything
    head_status: int | None = None  # answer this status to HEAD (e.g. 405)
    truncate: bool = False  # announce the full length but send half the body, then close
    stall_first: float = 0.0  # the first request sleeps this long before answering
    stall_body: float = 0.0  # GETs send half the body, then sleep this long before the rest
    stall_gets: int = 1  # how many GETs stall mid-body (the first ones)
    body: bytes | None = None  # serve these bytes instead of the file's (e.g. an HTML page)
    etag: bool = True
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str | None = None, name: str | None = None) -> int:
        with self.lock:
            return sum(
                n for (m, p), n in self.requests.items() if (method is None or m == method) and (name is None or p.endswith("/" + name))
            )


def _handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            with state.lock:
                state.requests[(self.command, self.path)] += 1
                number = sum(state.requests.values())
            if number == 1 and state.stall_first:
                time.sleep(state.stall_first)
            if number <= state.fail_first:
                return self.send_error(500)
            if state.status:
                return self.send_error(state.status)
            if not body and state.head_status:
                return self.send_error(state.head_status)
            file = state.root / Path(unquote(urlsplit(self.path).path)).name
            if not file.is_file():
                return self.send_error(404)
            data, stat = file.read_bytes() if state.body is None else state.body, file.stat()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Last-Modified", self.date_time_string(stat.st_mtime))
            if state.etag:
                self.send_header("ETag", f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"')
            self.end_headers()
            if not body:
                return None
            if state.stall_body and state.count("GET") <= state.stall_gets:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                time.sleep(state.stall_body)
                return None
            self.wfile.write(data[: len(data) // 2] if state.truncate else data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # concurrency tests open many connections at once

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that time out leave broken pipes behind; not the test's concern


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    state = Server(root)
    httpd = _QuietServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/trip-data"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record backoff delays instead of sleeping them."""
    delays: list[float] = []
    monkeypatch.setattr(sources.time, "sleep", delays.append)
    return delays


# --- names and defaults -------------------------------------------------------------------


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAXI_PIPELINE_CACHE", str(tmp_path / "explicit"))  # the config's default, read where it is built
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "taxi-pipeline"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "taxi-pipeline"


def test_unknown_taxi_is_named(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="'fhv'"):
        resolve_month(str(tmp_path), "fhv", JAN)


# --- local folders ------------------------------------------------------------------------


def test_local_folder_resolves_in_place(tmp_path: Path) -> None:
    path = write_month(tmp_path)
    found = resolve_month(str(tmp_path), "yellow", JAN)
    assert found == MonthFile("yellow", JAN, str(path), path, found.identity)
    assert pq.read_table(found.path).num_rows == 1000

    write_month(tmp_path, rows=1200, seed=1)  # rewritten with new content
    assert resolve_month(str(tmp_path), "yellow", JAN).identity != found.identity

    again = resolve_month(str(tmp_path), "yellow", JAN).identity
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same bytes, touched
    assert resolve_month(str(tmp_path), "yellow", JAN).identity != again


def test_missing_local_month_names_month_and_path(tmp_path: Path) -> None:
    write_month(tmp_path)
    with pytest.raises(PipelineError) as info:
        resolve_month(str(tmp_path), "yellow", FEB)
    message = str(info.value)
    assert "2023-02" in message and str(tmp_path / month_filename("yellow", FEB)) in message
    assert "\n" not in message


def test_missing_source_folder_is_named(tmp_path: Path) -> None:
    source = str(tmp_path / "nowhere")
    with pytest.raises(PipelineError, match="source folder") as info:
        resolve_month(source, "yellow", JAN)
    assert source in str(info.value)


def test_file_url_is_a_local_folder(tmp_path: Path) -> None:
    path = write_month(tmp_path, taxi="green")
    found = resolve_month(tmp_path.as_uri(), "green", JAN, cache_dir=tmp_path / "unused")
    assert found.path == path
    assert found.identity == resolve_month(str(tmp_path), "green", JAN).identity
    assert not (tmp_path / "unused").exists()
    with pytest.raises(PipelineError, match=r"2023-02.*file not found"):
        resolve_month(tmp_path.as_uri(), "green", FEB)


# --- http(s) ------------------------------------------------------------------------------


def test_http_download_is_byte_identical_and_cached(server: Server, cache: Path) -> None:
    original = write_month(server.root)
    found = resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    assert found.location == f"{server.url}/{original.name}"
    assert found.path.read_bytes() == original.read_bytes()
    assert found.path.is_relative_to(cache)
    assert pq.read_table(found.path).num_rows == 1000
    assert server.count("GET") == 1

    again = resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    assert again == found
    assert server.count("GET") == 1  # identity unchanged: only a HEAD
    assert server.count("HEAD") == 2
    # only the file and its sidecar; no temp files left behind
    assert [p.name for p in cached_files(cache)] == [original.name, original.name + ".json"]


def test_http_changed_content_is_downloaded_again(server: Server, cache: Path) -> None:
    write_month(server.root)
    first = resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    changed = write_month(server.root, rows=1500, seed=2)
    second = resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    assert second.identity != first.identity
    assert server.count("GET") == 2
    assert second.path.read_bytes() == changed.read_bytes()
    assert pq.read_table(second.path).num_rows == 1500


def test_http_without_etag_uses_length_and_last_modified(server: Server, cache: Path) -> None:
    server.etag = False
    original = write_month(server.root)
    found = resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    assert found.identity.startswith(f"size={original.stat().st_size};last_modified=")
    resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    assert server.count("GET") == 1


def test_http_head_refused_falls_back_to_get(server: Server, cache: Path) -> None:
    server.head_status = 405
    original = write_month(server.root)
    found = resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    assert found.path.read_bytes() == original.read_bytes()
    written = found.path.stat().st_mtime_ns
    again = resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    assert again.identity == found.identity
    assert found.path.stat().st_mtime_ns == written  # body not stored again


def test_http_404_is_final_and_names_url_and_month(server: Server, cache: Path, no_sleep: list[float]) -> None:
    with pytest.raises(PipelineError) as info:
        resolve_month(server.url, "green", FEB, cache_dir=cache)
    url = f"{server.url}/green_tripdata_2023-02.parquet"
    assert str(info.value) == f"month 2023-02: not found (HTTP 404) at {url}"
    assert server.count() == 1 and no_sleep == []
    assert cached_files(cache) == []


def test_http_403_is_final(server: Server, cache: Path, no_sleep: list[float]) -> None:
    server.status = 403
    with pytest.raises(PipelineError, match=r"HTTP 403"):
        resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    assert server.count() == 1


def test_http_500s_are_retried_with_exponential_backoff(server: Server, cache: Path, no_sleep: list[float]) -> None:
    original = write_month(server.root)
    server.fail_first = 2
    found = resolve_month(server.url, "yellow", JAN, cache_dir=cache, retries=3, backoff=0.5)
    assert found.path.read_bytes() == original.read_bytes()
    assert no_sleep == [0.5, 1.0]
    assert server.count("HEAD") == 3 and server.count("GET") == 1


def test_http_real_retry_with_zero_backoff(server: Server, cache: Path) -> None:
    original = write_month(server.root)
    server.fail_first = 2
    found = resolve_month(server.url, "yellow", JAN, cache_dir=cache, backoff=0)
    assert found.path.read_bytes() == original.read_bytes()


def test_http_persistent_500_gives_one_error(server: Server, cache: Path, no_sleep: list[float]) -> None:
    write_month(server.root)
    server.status = 503
    with pytest.raises(PipelineError) as info:
        resolve_month(server.url, "yellow", JAN, cache_dir=cache, retries=2)
    message = str(info.value)
    assert message.startswith(f"month 2023-01: could not fetch {server.url}/yellow_tripdata_2023-01.parquet")
    assert "after 3 attempts" in message and "503" in message
    assert server.count() == 3 and no_sleep == [1.0, 2.0]


def test_http_truncated_body_leaves_nothing_behind(server: Server, cache: Path, no_sleep: list[float]) -> None:
    write_month(server.root)
    server.truncate = True
    with pytest.raises(PipelineError) as info:
        resolve_month(server.url, "yellow", JAN, cache_dir=cache, retries=2)
    assert "2023-01" in str(info.value) and server.url in str(info.value)
    assert server.count("GET") == 3
    assert cached_files(cache) == []  # neither the final name, a sidecar, nor a temp file


def test_http_truncation_keeps_previous_good_copy(server: Server, cache: Path, no_sleep: list[float]) -> None:
    original = write_month(server.root).read_bytes()
    good = resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    write_month(server.root, rows=1500, seed=3)
    server.truncate = True
    with pytest.raises(PipelineError):
        resolve_month(server.url, "yellow", JAN, cache_dir=cache, retries=1)
    assert good.path.read_bytes() == original
    assert len(cached_files(cache)) == 2


def test_http_timeout_is_retried(server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = write_month(server.root)
    server.stall_first = 1.0
    started = time.monotonic()
    found = resolve_month(server.url, "yellow", JAN, cache_dir=cache, backoff=0, timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert found.path.read_bytes() == original.read_bytes()


def test_http_three_500s_then_success_after_real_backoff(server: Server, cache: Path) -> None:
    original = write_month(server.root)
    server.fail_first = 3
    started = time.monotonic()
    found = resolve_month(server.url, "yellow", JAN, cache_dir=cache, retries=3, backoff=0.05)
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.2  # slept 0.05 * 2**n after each 500
    assert found.path.read_bytes() == original.read_bytes()
    assert server.count("HEAD") == 4 and server.count("GET") == 1


def test_http_stall_mid_body_times_out_then_succeeds(server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = write_month(server.root, rows=20_000)
    server.stall_body = 3.0
    started = time.monotonic()
    found = resolve_month(server.url, "yellow", JAN, cache_dir=cache, backoff=0, timeout=0.3)
    assert time.monotonic() - started < 2.0  # the stalled body was abandoned after 0.3 s, not waited for
    assert found.path.read_bytes() == original.read_bytes()
    assert server.count("GET") == 2
    assert len(cached_files(cache)) == 2


def test_http_body_that_always_stalls_is_one_line_and_leaves_nothing(server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_month(server.root, rows=20_000)
    server.stall_body, server.stall_gets = 2.0, 99
    with pytest.raises(PipelineError) as info:
        resolve_month(server.url, "yellow", JAN, cache_dir=cache, retries=1, backoff=0, timeout=0.2)
    message = str(info.value)
    assert message.startswith(f"month 2023-01: could not fetch {server.url}/yellow_tripdata_2023-01.parquet after 2 attempts")
    assert "timed out" in message and "\n" not in message
    assert cached_files(cache) == []


def test_http_body_not_parquet_is_final_and_never_cached(server: Server, cache: Path, no_sleep: list[float]) -> None:
    original = write_month(server.root)
    server.body = b"<!DOCTYPE html><html><body>Service moved</body></html>"
    with pytest.raises(PipelineError) as info:
        resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    url = f"{server.url}/yellow_tripdata_2023-01.parquet"
    assert str(info.value) == f"month 2023-01: {url} is not a parquet file (54 bytes starting b'<!DOCTYPE html><')"
    assert server.count("GET") == 1 and no_sleep == []  # final: not retried
    assert cached_files(cache) == []
    server.body = None  # the server recovers: the next run fetches the real file
    assert resolve_month(server.url, "yellow", JAN, cache_dir=cache).path.read_bytes() == original.read_bytes()


def test_pipeline_error_from_a_404_survives_pickling_of_its_chain(server: Server, cache: Path) -> None:
    """distributed pickles a task's exception with tblib, chain included; urllib's HTTPError cannot be unpickled."""
    import pickle

    import tblib.pickling_support

    with pytest.raises(PipelineError) as info:
        resolve_month(server.url, "yellow", FEB, cache_dir=cache)
    error = info.value
    assert error.__context__ is None and error.__cause__ is None
    tblib.pickling_support.install(PipelineError)  # as distributed does for the exceptions it sends
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is PipelineError and str(copy) == str(error)


@pytest.mark.slow
@pytest.mark.cluster
def test_cli_http_404_is_the_months_one_line(server: Server, tmp_path: Path, prefect_api_url: str, one_worker: DaskProcesses) -> None:
    write_months(server.root, parse_months("2023-01:2023-02"), 2_000)
    result = _train_http(server.url, tmp_path, prefect_api_url, one_worker)
    line = _one_error_line(result)
    assert line == f"error: month 2023-03: not found (HTTP 404) at {server.url}/yellow_tripdata_2023-03.parquet"
    assert "TypeError" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.cluster
def test_cli_http_body_not_parquet_is_one_line(server: Server, tmp_path: Path, prefect_api_url: str, one_worker: DaskProcesses) -> None:
    write_months(server.root, parse_months("2023-01:2023-03"), 2_000)
    server.body = b"<html><body>Please log in</body></html>"
    line = _one_error_line(_train_http(server.url, tmp_path, prefect_api_url, one_worker))
    assert line.startswith(f"error: month 2023-01: {server.url}/yellow_tripdata_2023-01.parquet is not a parquet file (39 bytes")
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "cache").rglob("*.parquet"))


def _train_http(url: str, tmp_path: Path, prefect_api_url: str, cluster: DaskProcesses) -> subprocess.CompletedProcess[str]:
    """``taxi-pipeline train`` on an http source, on the session's one worker, no CV, months cached under ``tmp_path``."""
    options = ("--scheduler", cluster.address, "--folds", "0", "--cache-dir", str(tmp_path / "cache"))
    return _train(url, tmp_path / "out", *options, env={"PREFECT_API_URL": prefect_api_url})  # type: ignore[arg-type]  # a URL, not a Path


def test_damaged_cache_entry_is_fetched_again(server: Server, cache: Path) -> None:
    original = write_month(server.root)
    found = resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    found.path.write_bytes(b"x" * original.stat().st_size)  # same size, wrong bytes, new mtime
    again = resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    assert again.path.read_bytes() == original.read_bytes()
    assert server.count("GET") == 2


def test_two_sources_do_not_collide(server: Server, cache: Path) -> None:
    write_month(server.root)
    a = resolve_month(server.url, "yellow", JAN, cache_dir=cache)
    b = resolve_month(server.url.replace("/trip-data", "/mirror"), "yellow", JAN, cache_dir=cache)
    assert a.path != b.path and a.path.parent.parent == b.path.parent.parent == cache
    assert "127.0.0.1" in a.path.parent.name


def test_concurrent_resolves_are_safe(server: Server, cache: Path) -> None:
    original = write_month(server.root, rows=20_000)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: resolve_month(server.url, "yellow", JAN, cache_dir=cache), range(8)))
    assert {r.path for r in results} == {results[0].path}
    assert {r.identity for r in results} == {results[0].identity}
    assert results[0].path.read_bytes() == original.read_bytes()
    assert len(cached_files(cache)) == 2  # no stray temp files


# --- other fsspec URLs --------------------------------------------------------------------


@pytest.fixture
def memory_source() -> Iterator[str]:
    bucket = f"memory://test-{uuid.uuid4().hex}/trip-data"
    yield bucket
    fs, path = fsspec.core.url_to_fs(bucket)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_memory_source_is_copied_and_cached(memory_source: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_month(tmp_path).read_bytes()
    fs, _ = fsspec.core.url_to_fs(memory_source)
    fs.pipe(f"{memory_source}/yellow_tripdata_2023-01.parquet", data)

    reads: list[str] = []  # pipe() opens for writing too; count only reads
    real_open = type(fs)._open

    def counting_open(self: fsspec.AbstractFileSystem, path: str, mode: str = "rb", **kwargs: object) -> object:
        if "r" in mode:
            reads.append(path)
        return real_open(self, path, mode, **kwargs)

    monkeypatch.setattr(type(fs), "_open", counting_open)

    found = resolve_month(memory_source, "yellow", JAN, cache_dir=cache)
    assert found.path.read_bytes() == data and found.path.is_relative_to(cache)
    assert pq.read_table(found.path).num_rows == 1000
    assert found.identity.startswith(f"size={len(data)};")
    again = resolve_month(memory_source, "yellow", JAN, cache_dir=cache)
    assert again == found and len(reads) == 1

    time.sleep(0.001)  # memory fs stamps 'created' with microseconds
    fs.pipe(f"{memory_source}/yellow_tripdata_2023-01.parquet", data)  # same bytes, new version
    changed = resolve_month(memory_source, "yellow", JAN, cache_dir=cache)
    assert changed.identity != found.identity and len(reads) == 2


def test_memory_source_missing_month(memory_source: str, cache: Path) -> None:
    with pytest.raises(PipelineError) as info:
        resolve_month(memory_source, "green", FEB, cache_dir=cache)
    assert str(info.value) == f"month 2023-02: file not found: {memory_source}/green_tripdata_2023-02.parquet"


def _resolve_in_child(args: tuple[str, str]) -> tuple[str, str, bytes]:
    url, cache_dir = args
    found = resolve_month(url, "yellow", JAN, cache_dir=Path(cache_dir), backoff=0)
    return str(found.path), found.identity, found.path.read_bytes()


def test_concurrent_processes_share_one_cache(server: Server, cache: Path) -> None:
    original = write_month(server.root, rows=50_000).read_bytes()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_resolve_in_child, [(server.url, str(cache))] * 8)
    assert {(path, identity) for path, identity, _ in results} == {results[0][:2]}
    assert all(data == original for _, _, data in results)  # every reader saw a complete file
    assert len(cached_files(cache)) == 2


@pytest.mark.parametrize(
    "source",
    ["https://example.com/../../../etc", "s3://bucket/../../..", "http://example.com/a/%2e%2e/%2e%2e/b", "gs://b/x/../../../../root"],
)
def test_a_source_that_would_escape_the_cache_folder_stays_inside_it(tmp_path: Path, source: str) -> None:
    from pipeline.edge.sources import _cache_folder

    folder = tmp_path / _cache_folder(source)
    assert folder.parent == tmp_path and folder.resolve().parent == tmp_path.resolve()  # one plain folder name, whatever the URL
