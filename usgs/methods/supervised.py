"""Fully-supervised segmentation: the upper bound every unsupervised / weak method is compared with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from usgs.methods.base import OptimizerFactory, SegmentationModule, split_backbone_params


class SupervisedSegmentation(SegmentationModule):
    """Any ``net: [B,3,H,W] -> logits [B,C,H,W]`` trained with cross-entropy (ignore 255) on ``target_key``.

    ``target_key`` is ``mask`` for real labels; ``prior`` trains on a cached prior or pseudo labels.
    ``class_weights`` rescales rare classes (the Vaihingen seed weighted car x10). ``loss``, a module
    ``(logits, target) -> scalar`` ignoring 255, replaces the cross-entropy (e.g. the twin seed's
    fine-tuning Dice, ``usgs.methods.losses.DiceLoss``); ``class_weights`` then does not apply.
    """

    def __init__(self, net: nn.Module, num_classes: int, optimizer: OptimizerFactory | None = None,
                 poly_power: float = 0.9, backbone_lr_scale: float = 1.0, target_key: str = "mask",
                 class_weights: Sequence[float] | None = None, loss: nn.Module | None = None,
                 **base: Any) -> None:
        super().__init__(num_classes, optimizer, poly_power, **base)
        self.net = net
        if loss is not None and class_weights:
            raise ValueError("class_weights weight the cross-entropy; with a loss module set them in it")
        self.loss = loss
        self.backbone_lr_scale = backbone_lr_scale
        self.target_key = target_key
        weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights else None
        if weight is not None and weight.numel() != num_classes:
            raise ValueError(f"class_weights has {weight.numel()} entries, expected num_classes={num_classes}")
        self.class_weights: Tensor | None
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)

    def predict(self, image: Tensor) -> Tensor:
        return self.net(image)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.target_key not in batch:
            raise KeyError(f"Batch has no {self.target_key!r} (keys: {sorted(batch)}); "
                           "set data.prior=<name> to train on a prior")
        logits = self.net(batch["image"])
        if self.loss is not None:
            loss = self.loss(logits, batch[self.target_key])
        else:
            loss = F.cross_entropy(logits, batch[self.target_key], weight=self.class_weights,
                                   ignore_index=self.ignore_index)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def param_groups(self) -> list[dict[str, Any]]:
        backbone = getattr(self.net, "backbone", None)
        if backbone is None or self.backbone_lr_scale == 1.0:
            return super().param_groups()
        backbone_ids = {id(p) for p in backbone.parameters()}
        rest = [p for p in self.parameters() if id(p) not in backbone_ids]
        return split_backbone_params(backbone, rest, self.backbone_lr_scale)
