"""The LightningModule every method builds on: one validation/test loop, one metric, one LR schedule."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from usgs.methods.sliding_window import sliding_window_logits
from usgs.methods.training_rng import TrainingRNG
from usgs.metrics import Matching, SegmentationMetric

OptimizerFactory = Callable[..., Optimizer]


def poly_lambda(step: int, total_steps: int, power: float) -> float:
    """Poly learning-rate factor (1 - step/total)^power, as in DeepLab (Chen et al., 2017)."""
    return max(0.0, 1.0 - step / max(1, total_steps)) ** power


class SegmentationModule(pl.LightningModule):
    """Shared base: validation/test with :class:`~usgs.metrics.SegmentationMetric`, poly LR per step.

    Subclasses implement ``training_step`` (log ``train/loss``) and ``predict(image [B,3,H,W])`` returning
    class/cluster ids ``[B,H,W]`` or logits ``[B,K,H,W]``. ``param_groups()`` may return groups with an
    ``lr_scale`` (e.g. backbone at lr/10). Logged: ``val/miou``, ``val/miou_best``, ``val/pixel_accuracy``,
    ``test/miou``, ``test/pixel_accuracy`` and ``test/iou/<class>``.

    ``uses_labels`` says whether the method learns from ground truth. ``train.py`` reads it: methods
    that do keep ``best.ckpt`` by ``val/miou`` and are tested on it; label-free ones (False) keep only
    ``last.ckpt`` and nothing acts on ``val/miou``. Training draws its randomness from its own
    generator (:class:`~usgs.methods.training_rng.TrainingRNG`); subclasses that override
    ``on_train_batch_start`` / ``on_train_batch_end`` / the checkpoint hooks call ``super()``.
    """

    uses_labels: bool = True  # a class attribute; a property where a setting decides it

    def __init__(self, num_classes: int, optimizer: OptimizerFactory | None = None, poly_power: float = 0.9,
                 matching: Matching = "none", num_predictions: int | None = None, ignore_index: int = 255,
                 sliding_window: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                 subset_classes: Sequence[int] | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.poly_power = poly_power
        self.ignore_index = ignore_index
        self.sliding_window = tuple(sliding_window) if sliding_window else None
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        # Also logged: test/miou_subset, the mean IoU over these class ids only (the Vaihingen seed
        # reports 5 classes, clutter dropped, beside our 6-class figure).
        self.subset_classes = [int(c) for c in subset_classes] if subset_classes else None
        if self.subset_classes and not all(0 <= c < num_classes for c in self.subset_classes):
            raise ValueError(f"subset_classes {self.subset_classes} must lie in [0, {num_classes})")
        self.val_metric = SegmentationMetric(num_classes, num_predictions, matching, ignore_index)
        self.test_metric = SegmentationMetric(num_classes, num_predictions, matching, ignore_index)
        self.best_val_miou = 0.0  # checkpointed: a resumed run keeps the best of the epochs before
        self.training_rng = TrainingRNG()
        self.run_config: dict[str, Any] | None = None  # set by train.py; stored in every checkpoint

    # --- to implement --------------------------------------------------------------------------
    def predict(self, image: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement predict(image)")

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    # --- evaluation ----------------------------------------------------------------------------
    def predict_full(self, image: Tensor) -> Tensor:
        """``predict`` on whole images, or tiled when ``sliding_window=[window, stride]`` is set."""
        if self.sliding_window is None:
            return self.predict(image)
        window, stride = self.sliding_window
        return sliding_window_logits(self.predict, image, window, stride)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metric.update(self.predict_full(batch["image"]), batch["mask"])

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.test_metric.update(self.predict_full(batch["image"]), batch["mask"])

    # --- training randomness and checkpoints ---------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.training_rng.enter(self.device, self.global_rank)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.training_rng.exit(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Here, not in a callback: module hooks also run for weights-only checkpoints (best.ckpt).
        if self.run_config is not None:
            checkpoint["usgs_config"] = self.run_config
        checkpoint["usgs_val_miou_best"] = self.best_val_miou
        checkpoint["usgs_training_rng"] = self.training_rng.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_miou = float(checkpoint.get("usgs_val_miou_best", 0.0))
        self.training_rng.load_state_dict(checkpoint.get("usgs_training_rng"))

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metric.compute()  # already reduced over processes
        self.val_metric.reset()
        miou = float(torch.nan_to_num(scores["miou"], nan=0.0))
        if not self.trainer.sanity_checking:
            self.best_val_miou = max(self.best_val_miou, miou)
        self.log("val/miou", miou, prog_bar=True)
        self.log("val/miou_best", self.best_val_miou, prog_bar=True)
        self.log("val/pixel_accuracy", float(scores["pixel_accuracy"]))

    def on_test_epoch_end(self) -> None:
        scores = self.test_metric.compute()
        self.test_metric.reset()
        self.log("test/miou", float(scores["miou"]))
        self.log("test/pixel_accuracy", float(scores["pixel_accuracy"]))
        if self.subset_classes:
            self.log("test/miou_subset", float(torch.nanmean(scores["iou"][self.subset_classes])))
        for name, value in zip(self.class_names, scores["iou"].tolist(), strict=False):
            self.log(f"test/iou/{name}", value)

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError(f"{type(self).__name__}: no optimizer given (set model.optimizer in the config)")
        groups = self.param_groups()
        base_lr = _base_lr(self.optimizer_factory)
        for group in groups:
            group["lr"] = base_lr * group.pop("lr_scale", 1.0)
        optimizer = self.optimizer_factory(groups)
        total = int(self.trainer.estimated_stepping_batches)
        schedule = LambdaLR(optimizer, functools.partial(poly_lambda, total_steps=total, power=self.poly_power))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _base_lr(factory: OptimizerFactory) -> float:
    keywords = getattr(factory, "keywords", {})
    if "lr" not in keywords:
        raise ValueError("The optimizer config must set lr (e.g. model.optimizer.lr=0.01)")
    return float(keywords["lr"])


def split_backbone_params(backbone: nn.Module, rest: Iterable[nn.Parameter],
                          backbone_lr_scale: float) -> list[dict[str, Any]]:
    """Two parameter groups: the backbone at ``lr * backbone_lr_scale``, everything else at ``lr``."""
    return [
        {"params": [p for p in backbone.parameters() if p.requires_grad], "lr_scale": backbone_lr_scale},
        {"params": [p for p in rest if p.requires_grad]},
    ]
