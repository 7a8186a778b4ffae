"""The quickstart notebook runs top to bottom on small data and shows what the run wrote, so it never rots.

The notebook is stored WITH its outputs (so its plots show on GitHub), from a real
execution with Prefect's log lines and execution timestamps stripped. To store it
again after editing it, from the repository root (uses the notebook's defaults;
set ``QUICKSTART_DIR`` to keep the generated files elsewhere than ``runs/quickstart``)::

    .venv/bin/python tests/test_notebooks.py
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from pipeline.core import render
from pipeline.core.results import RunResult

ROOT = Path(__file__).parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
#: The stored notebook stays small enough to browse: two small PNGs, no log text.
MAX_STORED_BYTES = 300_000
#: A Prefect log line starts with its time: ``05:53:39.507 | INFO    | Task run ...``.
PREFECT_LOG = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| ")


def execute(notebook: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell in a fresh ``python3`` kernel started in ``cwd``; a failing cell raises."""
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def tagged(notebook: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    (cell,) = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    return cell


def result_text(cell: nbformat.NotebookNode) -> str:
    """The ``text/plain`` of the cell's value (its last expression)."""
    (value,) = [o for o in cell.outputs if o.output_type == "execute_result"]
    return value.data["text/plain"]


def stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def table_rows(text: str) -> list[list[str]]:
    """The rows of a DataFrame's ``text/plain`` with a named index (two header lines), split on runs of 2+ spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()[2:]]


def images(notebook: nbformat.NotebookNode) -> list[bytes]:
    return [
        base64.b64decode(o.data["image/png"])
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if "image/png" in o.get("data", {})
    ]


def is_prefect_log(output: nbformat.NotebookNode) -> bool:
    """Prefect's logs reach a notebook as rich ``display_data`` (flow logs) and ``stderr`` streams (task logs)."""
    if output.output_type == "display_data":
        return bool(PREFECT_LOG.match(output.data.get("text/plain", "")))
    return output.output_type == "stream" and output.name == "stderr" and bool(PREFECT_LOG.match(output.text))


def strip_volatile(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop Prefect's log lines and the execution timestamps: what is left is worth storing."""
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                output.text = "".join(line for line in output.text.splitlines(keepends=True) if not PREFECT_LOG.match(line))
                if not output.text:
                    continue
            if not is_prefect_log(output):
                outputs.append(output)
        cell.outputs = outputs
    notebook.metadata = nbformat.from_dict({"kernelspec": notebook.metadata["kernelspec"]})  # no language_info: a Python version
    return notebook


@pytest.mark.slow
@pytest.mark.cluster
def test_quickstart_shows_what_its_run_wrote(tmp_path, prefect_api_url, monkeypatch):
    monkeypatch.setenv("QUICKSTART_ROWS", "30000")
    monkeypatch.setenv("QUICKSTART_DIR", str(tmp_path))
    notebook = execute(nbformat.read(NOTEBOOK, as_version=4), tmp_path)
    result = RunResult.from_dict(json.loads((tmp_path / "run" / "metrics.json").read_text()))
    assert result.cv is not None

    train_cell = tagged(notebook, "metrics")
    assert f"Prefect API: {prefect_api_url}\n" in stdout(train_cell)  # the kernel reported to the session's API
    shown = dict(map(tuple, table_rows(result_text(train_cell))))
    assert shown == dict(render.metric_rows(result))  # the run's figures, the same as in metrics.json
    assert shown["validation RMSE (min)"] == f"{result.val_rmse:.4f}"

    cv_cell = tagged(notebook, "cv-summary")
    assert render.cv_title(result.cv) in stdout(cv_cell)
    assert table_rows(result_text(cv_cell)) == [list(row) for row in render.cv_rows(result.cv)]
    assert [row[0] for row in render.cv_rows(result.cv)] == ["0.01", "0.1", "1", "10"]

    header, _, *grid = result_text(tagged(notebook, "cv-grid")).splitlines()  # fold × alpha RMSEs
    assert [float(a) for a in header.split()[1:]] == [0.01, 0.1, 1.0, 10.0]
    assert [int(line.split()[0]) for line in grid] == [0, 1, 2, 3, 4]
    scores = {(s.fold, s.alpha): s.rmse for s in result.cv.scores}
    for line in grid:
        fold, *rmses = line.split()
        assert [float(r) for r in rmses] == pytest.approx([scores[int(fold), a] for a in (0.01, 0.1, 1.0, 10.0)], abs=1e-6)

    # The last cell: the RMSE of the saved model's predictions, read back with load_model.
    assert float(result_text(tagged(notebook, "check"))) == pytest.approx(result.val_rmse, rel=1e-6)

    pngs = images(notebook)  # CV RMSE per alpha; predicted vs actual
    assert len(pngs) == 2 and all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs)
    assert [len(images(nbformat.from_dict({"cells": [tagged(notebook, t)]}))) for t in ("cv-summary", "check")] == [1, 1]


def test_stored_notebook_has_its_outputs():
    """Committed with outputs from a run (see the module docstring), small, without log lines or timestamps."""
    assert NOTEBOOK.stat().st_size < MAX_STORED_BYTES
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "stored without a top-to-bottom run"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len(images(notebook)) == 2, "stored without its plots: run `.venv/bin/python tests/test_notebooks.py`"
    assert not [o for o in outputs if is_prefect_log(o)]
    assert not [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"], "stored with warnings: store it again"
    assert not [c.id for c in notebook.cells if "execution" in c.metadata]
    assert float(result_text(tagged(notebook, "check"))) > 0


@pytest.mark.slow
@pytest.mark.parametrize("where", ["notebooks", "elsewhere"])
def test_default_working_folder(where, tmp_path, monkeypatch):
    """Run from notebooks/ (or anywhere in the repository), files go to runs/quickstart at its root, which git ignores.

    Outside a repository, to runs/quickstart in the current folder.
    """
    monkeypatch.delenv("QUICKSTART_DIR", raising=False)
    cwd, root = (ROOT / "notebooks", ROOT) if where == "notebooks" else (tmp_path, tmp_path)
    setup = tagged(nbformat.read(NOTEBOOK, as_version=4), "setup")
    setup.outputs = []
    probe = nbformat.v4.new_code_cell("print(WORKDIR.resolve(), DATA == WORKDIR / 'data', OUTPUT == WORKDIR / 'run', sep='\\n')")
    notebook = execute(nbformat.v4.new_notebook(cells=[setup, probe]), cwd)
    assert stdout(notebook.cells[1]).split("\n") == [str((root / "runs" / "quickstart").resolve()), "True", "True", ""]


def store() -> None:
    """Execute the notebook from notebooks/ as a reader would, and store it with its outputs."""
    started = time.perf_counter()
    notebook = strip_volatile(execute(nbformat.read(NOTEBOOK, as_version=4), NOTEBOOK.parent))
    nbformat.write(notebook, NOTEBOOK)
    print(f"{NOTEBOOK}: {NOTEBOOK.stat().st_size:,} bytes, executed in {time.perf_counter() - started:.0f} s")
    warnings = [o.text for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "stream" and o.name == "stderr"]
    if warnings:  # e.g. a worker's heartbeat failing as the LocalCluster closes: noise for a reader, so run it again
        print(f"stored with {len(warnings)} stderr output(s); run again for a clean copy:\n{warnings[0][:2000]}")


if __name__ == "__main__":
    store()
