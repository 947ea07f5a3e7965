"""Shared fixtures: compose the REAL configs in conf/ (as train.py would) into a temporary run dir."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["WANDB_MODE"] = "disabled"

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

SHARED_DATA = Path(os.environ.get("USGS_DATA_DIR", ROOT.parent / "shared" / "data"))
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))

# Small and fast on 2 cores: CSV logger only, the built-in synthetic data at 32 px.
FAST = ["logger=csv", "data.num_workers=0"]


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as the module ``name`` (bench/ is scripts, not a package), loaded once so
    every test patches the same module object (bench scripts import each other by that name)."""
    if name not in sys.modules:
        if str(ROOT / "bench") not in sys.path:
            sys.path.insert(0, str(ROOT / "bench"))
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
        assert spec and spec.loader
        sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up there
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def compose_config(config_name: str, overrides: list[str], run_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, writing into ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.log_dir = str(run_dir / "logs")
        cfg.paths.priors_dir = str(run_dir / "priors")
        if "features_dir" in cfg.paths:
            cfg.paths.features_dir = str(run_dir / "features")
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Trainers with deterministic=True and spawned strategies change process-wide torch settings."""
    import torch

    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(overrides, config_name="train", run_dir=None)`` -> composed config in tmp_path."""

    def _make(
        overrides: list[str] | None = None, config_name: str = "train", run_dir: Path | None = None
    ) -> DictConfig:
        fast = FAST if config_name == "train" else []
        return compose_config(config_name, [*fast, *(overrides or [])], run_dir or tmp_path)

    return _make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real dataset subsets beside the checkout; tests using them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set USGS_DATA_DIR)")
    return SHARED_DATA
