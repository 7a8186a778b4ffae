"""The quickstart notebook runs top to bottom on small data, so it never rots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_executes(tmp_path, prefect_api_url, monkeypatch):
    monkeypatch.setenv("QUICKSTART_ROWS", "30000")
    monkeypatch.setenv("QUICKSTART_DIR", str(tmp_path))
    assert os.environ["PREFECT_API_URL"] == prefect_api_url  # the kernel reports to the session's API
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["cv"]["folds"] == 5 and len(metrics["cv"]["by_alpha"]) == 4
    images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # CV RMSE per alpha; predicted vs actual
