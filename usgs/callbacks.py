"""Lightning callbacks: prediction overlays for TensorBoard / W&B, and the config stored in checkpoints."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

from usgs.data.transforms import denormalize


def color_palette(n: int, base: np.ndarray | None = None) -> np.ndarray:
    """``[n,3]`` uint8 colours: the dataset's palette first, then fixed pseudo-random ones."""
    rng = np.random.default_rng(0)
    extra = rng.integers(0, 256, size=(max(n, 1), 3), dtype=np.uint8)
    if base is not None and len(base):
        extra[: min(n, len(base))] = np.asarray(base, dtype=np.uint8)[:n]
    return extra[:n]


def overlay_panel(image: Tensor, mask: Tensor, pred: Tensor, palette: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """One row ``[H, 3W, 3]`` uint8: image | ground truth over image | prediction over image (ignore stays grey)."""
    rgb = denormalize(image[None])[0].cpu().numpy().astype(np.float32)
    panels = [rgb]
    for labels in (mask, pred):
        ids = labels.cpu().numpy()
        colours = np.full(rgb.shape, 128, dtype=np.float32)
        valid = (ids >= 0) & (ids < len(palette))
        colours[valid] = palette[ids[valid]]
        panels.append(alpha * colours + (1 - alpha) * rgb)
    return np.concatenate(panels, axis=1).clip(0, 255).astype(np.uint8)


class PredictionOverlays(pl.Callback):
    """Logs image / GT / prediction panels of the first validation batch every ``every_n_epochs``."""

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1) -> None:
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if (batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero
                or trainer.current_epoch % self.every_n_epochs):
            return
        images = batch["image"][: self.num_images]
        with torch.no_grad():
            pred = pl_module.predict_full(images)  # type: ignore[operator]
        if pred.dim() == 4:
            pred = pred.argmax(dim=1)
        metric = getattr(pl_module, "val_metric", None)
        num_ids = max(int(pred.max()) + 1, int(getattr(metric, "num_predictions", 0)),
                      int(getattr(pl_module, "num_classes", 0)))
        palette = color_palette(num_ids, getattr(getattr(trainer, "datamodule", None), "palette", None))
        grid = np.concatenate([overlay_panel(i, m, p, palette)
                               for i, m, p in zip(images, batch["mask"], pred, strict=False)], axis=0)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/overlays", grid, trainer.global_step, dataformats="HWC")
            elif isinstance(logger, WandbLogger):
                logger.log_image("val/overlays", images=[grid], step=trainer.global_step)


class StoreConfig(pl.Callback):
    """Gives the module the resolved run config, which it stores in every checkpoint (so
    ``evaluate.py ckpt_path=...`` can rebuild it), and stores the metrics logged so far in full
    checkpoints, so a run resumed after its last epoch still reports them."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.restored_metrics: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.run_config = self.config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["usgs_metrics"] = {key: float(value) for key, value in trainer.callback_metrics.items()
                                      if isinstance(value, Tensor) and value.numel() == 1}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.restored_metrics = dict(checkpoint.get("usgs_metrics", {}))
