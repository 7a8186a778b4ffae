"""The run's temporary Prefect API: its output goes to a log of its own, removed when it stops, named when it fails to start."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.errors import PipelineError
from pipeline.runtime import prefect_server


@pytest.fixture
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A Prefect home (and database) of the test's own, never the user's."""
    from prefect.settings import PREFECT_HOME, temporary_settings

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    with temporary_settings(updates={PREFECT_HOME: str(tmp_path)}):
        yield tmp_path


@pytest.mark.prefect_api
def test_a_temporary_api_writes_to_its_log_not_the_terminal_and_removes_it_when_stopped(own_home: Path) -> None:
    server = prefect_server.start_temporary()
    try:
        assert server.api_url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{server.api_url}/health").status_code == 200
        assert server.log is not None and server.log.exists() and server.log.name.startswith("taxi-pipeline-api-")
        for fd in (1, 2):  # its stdout and stderr are the log, not the terminal this process writes to
            assert Path(f"/proc/{server.process.pid}/fd/{fd}").resolve() == server.log.resolve()
    finally:
        server.stop()
    assert server.process.returncode is not None and not server.log.exists()


@pytest.mark.prefect_api
def test_a_temporary_api_that_does_not_answer_in_time_is_one_line_naming_its_kept_log(own_home: Path) -> None:
    with pytest.raises(PipelineError) as info:
        prefect_server.start_temporary(timeout=0.2)  # it needs seconds to import and migrate its database
    message = str(info.value)
    found = re.fullmatch(r"Prefect API on 127\.0\.0\.1:\d+ did not answer within 1 s; its log: (\S+)", message)
    assert found, message
    log = Path(found.group(1))
    assert log.exists()  # kept: it says why
    log.unlink()


@pytest.mark.slow
@pytest.mark.prefect_api
def test_the_test_servers_start_again_on_another_port_when_theirs_was_taken_meanwhile(
    tmp_path: Path, migrated_prefect_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixtures' ``prefect server start`` (:class:`~pipeline.runtime.testing.PrefectServer`) is given the OS's pick of
    a free port, which another process can bind first: here the first pick is a port held open."""
    import socket

    from pipeline.edge.ports import free_port
    from pipeline.runtime import testing
    from tests.conftest import prefect_home_from

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    picks = iter([port])
    monkeypatch.setattr(testing, "free_port", lambda: next(picks, None) or free_port())
    prefect_home_from(migrated_prefect_home, tmp_path / "prefect-home")
    try:
        server = testing.PrefectServer(tmp_path)
    finally:
        taken.close()
    try:
        assert f"Port {port} is already in use" in (tmp_path / "server-1.log").read_text()
        assert not server.url.startswith(f"http://127.0.0.1:{port}/")
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        server.close()
