"""The notebooks run headless (nbclient, the ipykernel a Jupyter front end uses), draw their figures
inline (PNG outputs: matplotlib is not forced to Agg) and save them as PNG files; stored without outputs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# notebook -> (text its cells print, the figure files it saves)
EXPECTED = {
    "priors": ("images; showing 6", ["priors.png"]),
    "maskcontrast": ("validation images; showing 6", ["maskcontrast.png"]),
    "twins": ("student vs prior on train", ["twins.png"]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_saved_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert not any('matplotlib.use("Agg")' in c.source for c in code)  # would stop inline figures


def _twins_run(make_cfg: Callable, run_dir: Path) -> Path:
    """A tiny finished twin run (its prior computed by prior_auto) for the twins notebook to load."""
    from usgs.run.train import train

    train(make_cfg(["experiment=twins", "data.image_size=32", "data.num_train=8", "data.num_val=4",
                    "data.num_test=4", "data.batch_size=4", "model.num_predictions=6", "prior_overrides=['prior.k=6']",
                    "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                    "test=false", "callbacks.prediction_overlays=null"], run_dir=run_dir))
    return run_dir


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_executes_headless_and_draws(name: str, make_cfg: Callable, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PROJECT_ROOT", str(NOTEBOOKS.parent))
    # the kernel imports this checkout's usgs (an editable install may point at another one)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("USGS_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as in Jupyter
    monkeypatch.setenv("MC_STEPS", "3")  # a few training steps: the point is that every cell runs
    monkeypatch.delenv("MC_CKPT", raising=False)
    if name == "twins":
        monkeypatch.setenv("USGS_TWINS_RUN", str(_twins_run(make_cfg, tmp_path / "twins_run")))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text, figures = EXPECTED[name]
    assert text in "".join(o.get("text", "") for o in outputs)
    inline = [o for o in outputs if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
    assert len(inline) >= len(figures), "no inline figure: the notebook must not force a non-GUI backend"
    for figure in figures:
        path = tmp_path / "figures" / figure
        assert path.is_file() and path.stat().st_size > 10_000, f"{figure} not saved"
