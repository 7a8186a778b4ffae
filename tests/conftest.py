"""Shared fixtures: small generated months, a real Prefect API and Dask cluster on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.months import parse_months
from pipeline.synth import write_months

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

#: Small enough for seconds, large enough that every frequent pair recurs across months.
ROWS = 40_000


@pytest.fixture(scope="session")
def months_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three generated yellow months (2023-01..03), several row groups each."""
    folder = tmp_path_factory.mktemp("months")
    write_months(folder, parse_months("2023-01:2023-03"), ROWS, seed=0, row_group_size=10_000)
    return folder


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Prefect API on 127.0.0.1 for the session, on a throwaway database."""
    from prefect.settings import PREFECT_HOME, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    previous = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_API_URL")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    from pipeline.prefect_api import prefect_api

    with temporary_settings(updates={PREFECT_HOME: str(home)}), prefect_api() as url:
        assert url.startswith("http://127.0.0.1:")
        yield url
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
