"""The MaskContrast notebook runs headless (nbclient) and is stored without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "maskcontrast.ipynb"


def test_notebook_saved_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_executes_headless(monkeypatch: pytest.MonkeyPatch) -> None:
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("MC_STEPS", "3")  # a few training steps: the point is that every cell runs
    monkeypatch.setenv("PROJECT_ROOT", str(NOTEBOOK.parents[1]))
    monkeypatch.delenv("MC_CKPT", raising=False)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "k-means prototypes: mIoU" in printed and "k-means pixels: mIoU" in printed
    assert "validation images; showing 6" in printed
