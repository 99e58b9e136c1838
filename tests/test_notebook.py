"""The quickstart notebook: it runs top to bottom, and it is stored without outputs."""

import os
from pathlib import Path

import nbclient
import nbformat
from jupyter_client import kernelspec

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
QUICKSTART = NOTEBOOKS / "quickstart.ipynb"


def _read():
    return nbformat.read(QUICKSTART, as_version=4)


def test_quickstart_is_stored_clean():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"code cells {dirty} carry outputs or execution counts; clear them"


def test_quickstart_executes(monkeypatch):
    # ipykernel provides the native "python3" kernel even where no kernelspec was installed.
    assert "python3" in kernelspec.find_kernel_specs(), "ipykernel must be importable"
    # The kernel imports jblase: make the checkout importable even without `pip install -e`.
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), *([path] if path else [])]))
    nb = _read()
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError at the first failing cell
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors, errors
    images = sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert images >= 5, f"expected the notebook's 5 figures, got {images}"
