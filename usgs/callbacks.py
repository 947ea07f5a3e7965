"""Lightning callbacks: prediction overlays for TensorBoard / W&B, and the config stored in checkpoints."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

from usgs.visualize import color_palette, prediction_panel


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt``: the epoch with the highest validation metric, for methods that learn from labels.

    A label-free method (``uses_labels`` False) leaves this one out and keeps ``last.ckpt``
    (``usgs.run.checkpoints.select_callbacks``); any *other* callback that acts on a val/test metric
    stops such a run at start-up.
    """


class PredictionOverlays(pl.Callback):
    """Logs image | ground truth | prediction of the first validation batch every ``every_n_epochs``:
    tiles of at least 192 px, column titles and a legend of the class colours (``usgs.visualize``)."""

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
        datamodule = getattr(trainer, "datamodule", None)
        palette = color_palette(num_ids, getattr(datamodule, "palette", None))
        names = list(getattr(datamodule, "class_names", None) or getattr(pl_module, "class_names", []))
        masks = batch["mask"][: len(images)] if "mask" in batch else [None] * len(images)
        grid = prediction_panel(list(images), list(masks), list(pred), palette, names)
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


class ChannelsLast(pl.Callback):
    """Keeps the model's 4-D weights channels-last (NHWC) from setup on: cuDNN's fast path for bf16
    convolutions on recent GPUs. Convolutions with NHWC weights return NHWC outputs for NCHW inputs,
    so batches need no conversion. Same numbers up to float rounding (tests/test_gpu_results.py).
    Enable with ``+callbacks.channels_last._target_=usgs.callbacks.ChannelsLast``.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)
