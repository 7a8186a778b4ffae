"""Test support shipped with the package: a real Prefect API on a throwaway database.

``tests/`` and ``benchmarks/`` both need one for their session; it lives here (as
``prefect.testing`` does in Prefect) so there is one copy of how it is brought up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def temporary_prefect_api(home: Path) -> Iterator[str]:
    """Start a Prefect API on 127.0.0.1 with ``PREFECT_HOME=home``; export its URL; stop it after."""
    from prefect.settings import PREFECT_HOME, temporary_settings

    from pipeline.runtime.prefect_api import prefect_api

    previous = {key: os.environ.get(key) for key in ("PREFECT_HOME", "PREFECT_API_URL")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    try:
        with temporary_settings(updates={PREFECT_HOME: str(home)}), prefect_api() as url:
            yield url
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
