"""Checkpoints of ``train.py``: which ones a method keeps and is tested on, and how to rebuild a module
from one (the run config travels inside it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from usgs.callbacks import BestCheckpoint
from usgs.methods.base import SegmentationModule

log = logging.getLogger(__name__)


def load_checkpoint(ckpt_path: str | Path) -> tuple[DictConfig, SegmentationModule]:
    """Return ``(run config, module with the checkpoint's weights)``; clear errors for foreign files."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path} (train.py writes <run dir>/checkpoints/last.ckpt, "
                                "and best.ckpt for methods that learn from labels)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "usgs_config" not in checkpoint:
        raise ValueError(f"{path} has no 'usgs_config': it was not written by usgs' train.py")
    cfg = OmegaConf.create(checkpoint["usgs_config"])
    model = instantiate(cfg.model, _convert_="all")
    model.load_state_dict(checkpoint["state_dict"])
    return cfg, model


def select_callbacks(model: SegmentationModule, callbacks: dict[str, Any]) -> list[Any]:
    """The callbacks a method may use. A label-free method (``uses_labels`` False) uses none that act on
    a validation or test metric, which come from ground truth: the default ``best.ckpt``
    (:class:`BestCheckpoint`) is left out (its checkpoint is last.ckpt), any other such callback (early
    stopping, a second checkpoint) is refused with its key."""
    kept = []
    for name, callback in callbacks.items():
        monitor = getattr(callback, "monitor", None)
        if not model.uses_labels and isinstance(monitor, str) and monitor.startswith(("val/", "test/")):
            if not isinstance(callback, BestCheckpoint):
                raise ValueError(f"callbacks.{name} acts on {monitor}, computed from ground-truth masks, but "
                                 f"{type(model).__name__} learns without labels: remove it (callbacks.{name}=null)")
            log.info("%s learns without labels: callbacks.%s (best by %s) is not used; its checkpoint "
                     "is last.ckpt", type(model).__name__, name, monitor)
            continue
        kept.append(callback)
    return kept


def checkpoint_to_test(trainer: pl.Trainer, model: SegmentationModule) -> str | None:
    """``best.ckpt`` (chosen on val) for methods that learn from labels, else the last checkpoint;
    None (the weights in memory) when no checkpoint callback wrote one."""
    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]  # type: ignore[attr-defined]
    best = [c.best_model_path for c in checkpoints if c.monitor and c.best_model_path]
    last = [c.last_model_path or (c.best_model_path if c.monitor is None else "") for c in checkpoints]
    chosen = (best if model.uses_labels else []) + [path for path in last if path]
    if not chosen:
        log.warning("No checkpoint was written: testing the weights in memory")
        return None
    log.info("Testing %s", chosen[0])
    return chosen[0]
