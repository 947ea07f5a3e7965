"""Multi-label image / crop classifier: the attention source of the weak-supervision pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usgs.data.sampling import class_presence
from usgs.methods.base import OptimizerFactory, SegmentationModule, split_backbone_params


class ImageClassifier(SegmentationModule):
    """Backbone + 1x1 conv scorer + global average pooling, trained with multi-label BCE on ``labels``.

    ``forward(image [B,3,H,W]) -> scores [B,C]``; ``cam(image) -> [B,C,h,w]`` class activation maps
    (the 1x1 conv before pooling equals a linear layer after it, Zhou et al., CVPR 2016, so the same
    weights give the CAM). ``pos_weight`` rebalances BCE per class (``"auto"``: negatives/positives
    counted on the training split at fit start). ``predict`` gives a segmentation from the CAMs of the
    predicted classes, so the shared validation loop reports the attention's mIoU; when the data has a
    background class (``background_index``) it gets the constant score ``bg_score`` (0.1, the CAM
    baseline's ``BG_SCORE`` of Araslanov & Roth's code).
    """

    pos_weight: Tensor

    def __init__(self, backbone: nn.Module, num_classes: int, optimizer: OptimizerFactory | None = None,
                 poly_power: float = 0.9, feature_key: str = "stage5", dropout: float = 0.5,
                 pos_weight: Sequence[float] | str | None = "auto", backbone_lr_scale: float = 0.1,
                 background_index: int | None = None, bg_score: float = 0.1,
                 cam_layer: str = "backbone.features.42", **base: Any) -> None:
        super().__init__(num_classes, optimizer, poly_power, **base)
        self.backbone = backbone
        self.feature_key = feature_key
        with torch.no_grad():
            probe = backbone(torch.zeros(1, 3, 64, 64))
        if feature_key not in probe:
            raise KeyError(f"feature_key {feature_key!r} not among the backbone outputs {sorted(probe)}")
        self.dropout = nn.Dropout2d(dropout)
        self.scorer = nn.Conv2d(probe[feature_key].shape[1], num_classes, 1)
        self.backbone_lr_scale = backbone_lr_scale
        self.background_index = background_index
        self.bg_score = bg_score
        self.cam_layer = cam_layer
        self.auto_pos_weight = pos_weight == "auto"
        if isinstance(pos_weight, str) and not self.auto_pos_weight:
            raise ValueError(f"pos_weight must be a list of {num_classes} floats, 'auto' or null, got {pos_weight!r}")
        weight = torch.ones(num_classes)
        if pos_weight is not None and not isinstance(pos_weight, str):
            weight = torch.tensor(list(pos_weight), dtype=torch.float32)
            if weight.numel() != num_classes:
                raise ValueError(f"pos_weight has {weight.numel()} entries, expected num_classes={num_classes}")
        self.register_buffer("pos_weight", weight)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.auto_pos_weight and datamodule is not None:
            presence = class_presence(datamodule.dataset("train", transform=None), self.num_classes)
            freq = torch.from_numpy(presence.mean(0)).float()
            # neg/pos ratio, capped so that a class seen once cannot dominate the loss.
            ratio = ((1 - freq) / freq.clamp_min(1e-3)).clamp(0.1, 100.0)
            self.pos_weight.copy_(torch.where(freq > 0, ratio, torch.ones_like(ratio)))

    def cam(self, image: Tensor) -> Tensor:
        return self.scorer(self.dropout(self.backbone(image)[self.feature_key]))

    def forward(self, image: Tensor) -> Tensor:
        return self.cam(image).mean(dim=(2, 3))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labels = batch["labels"]
        scores = self(batch["image"])
        if self.background_index is not None:  # the background is not a class to recognise
            keep = torch.arange(self.num_classes, device=labels.device) != self.background_index
            scores, labels = scores[:, keep], labels[:, keep]
            pos_weight = self.pos_weight[keep]
        else:
            pos_weight = self.pos_weight
        loss = F.binary_cross_entropy_with_logits(scores, labels, pos_weight=pos_weight)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def predict(self, image: Tensor) -> Tensor:
        maps = self.cam(image)
        present = torch.sigmoid(maps.mean(dim=(2, 3))) > 0.5
        present |= F.one_hot(maps.mean(dim=(2, 3)).argmax(1), self.num_classes).bool()  # at least one
        cams = F.relu(maps)
        cams = cams / cams.flatten(2).amax(-1).clamp_min(1e-5)[:, :, None, None]
        cams = torch.where(present[:, :, None, None], cams, torch.full_like(cams, -1.0))
        if self.background_index is not None:
            cams[:, self.background_index] = self.bg_score
        return F.interpolate(cams, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def param_groups(self) -> list[dict[str, Any]]:
        return split_backbone_params(self.backbone, self.scorer.parameters(), self.backbone_lr_scale)
