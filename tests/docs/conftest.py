"""The docs' tests run their commands in a reader's terminal (:class:`tests.docs.terminal.Session`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.terminal import Session


@pytest.fixture
def session(tmp_path: Path, prefect_api_url: str) -> Iterator[Session]:
    """A terminal in the test's folder on the session's Prefect API; its servers stopped after."""
    terminal = Session(tmp_path, prefect_api_url)
    try:
        yield terminal
    finally:
        terminal.close()
