"""Rebuild a trained module from a ``train.py`` checkpoint (the run config travels inside it)."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from usgs.methods.base import SegmentationModule


def load_checkpoint(ckpt_path: str | Path) -> tuple[DictConfig, SegmentationModule]:
    """Return ``(run config, module with the checkpoint's weights)``; clear errors for foreign files."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path} (train.py writes <run dir>/checkpoints/best.ckpt)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "usgs_config" not in checkpoint:
        raise ValueError(f"{path} has no 'usgs_config': it was not written by usgs' train.py")
    cfg = OmegaConf.create(checkpoint["usgs_config"])
    model = instantiate(cfg.model, _convert_="all")
    model.load_state_dict(checkpoint["state_dict"])
    return cfg, model
