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
    """Backbone + classifier head, trained with multi-label BCE on ``labels``.

    ``forward(image [B,3,H,W]) -> scores [B,C]``. Two heads:

    - ``head`` given (e.g. :class:`usgs.nets.vgg.VGGClassifierHead`, the seed's VGG16-BN fully
      connected classifier): scores = ``head(backbone(image)[feature_key])``; attention maps are
      Grad-CAM at ``cam_layer``;
    - ``head=None``: a 1x1 conv scorer + global average pooling; ``cam(image) -> [B,C,h,w]`` class
      activation maps (the 1x1 conv before pooling equals a linear layer after it, Zhou et al., CVPR
      2016; Grad-CAM of this head equals its CAM, up to the bias).

    ``pos_weight`` rebalances BCE per class (``None``: plain BCE, the seed's ``weighted_loss: False``;
    ``"auto"``: negatives/positives counted on the training split at fit start). ``predict`` gives a
    segmentation from the maps of the predicted classes, so the shared validation loop reports the
    attention's mIoU; when the data has a background class (``background_index``) it gets the
    constant score ``bg_score`` (0.1, the CAM baseline's ``BG_SCORE`` of Araslanov & Roth's code).
    """

    pos_weight: Tensor

    def __init__(self, backbone: nn.Module, num_classes: int, optimizer: OptimizerFactory | None = None,
                 poly_power: float = 0.9, feature_key: str = "stage5", dropout: float = 0.5,
                 pos_weight: Sequence[float] | str | None = None, backbone_lr_scale: float = 0.1,
                 background_index: int | None = None, bg_score: float = 0.1,
                 cam_layer: str = "backbone.features.42", head: nn.Module | None = None, **base: Any) -> None:
        super().__init__(num_classes, optimizer, poly_power, **base)
        self.backbone = backbone
        self.feature_key = feature_key
        with torch.no_grad():
            probe = backbone(torch.zeros(1, 3, 64, 64))
        if feature_key not in probe:
            raise KeyError(f"feature_key {feature_key!r} not among the backbone outputs {sorted(probe)}")
        self.head = head
        if head is None:
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
        """Class activation maps [B,C,h,w] of the global-average-pooling head."""
        if self.head is not None:
            raise RuntimeError("cam() needs the pooling head (head=None); use usgs.priors.cam.GradCAM")
        return self.scorer(self.dropout(self.backbone(image)[self.feature_key]))

    def forward(self, image: Tensor) -> Tensor:
        if self.head is not None:
            return self.head(self.backbone(image)[self.feature_key])
        return self.cam(image).mean(dim=(2, 3))

    def attention(self, image: Tensor, present: Tensor) -> Tensor:
        """Maps [B,C,H,W] in [0, 1] for the ``present`` [B,C] classes (0 elsewhere)."""
        if self.head is not None:
            from usgs.priors.cam import GradCAM  # local: usgs.priors imports usgs.data, not needed otherwise

            return GradCAM(self, self.cam_layer)(image, present.float())
        cams = F.relu(self.cam(image))
        cams = cams / cams.flatten(2).amax(-1).clamp_min(1e-5)[:, :, None, None]
        cams = F.interpolate(cams, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return cams * present[:, :, None, None]

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
        scores = self(image)
        present = torch.sigmoid(scores) > 0.5
        present |= F.one_hot(scores.argmax(1), self.num_classes).bool()  # at least one
        if self.background_index is not None:
            present[:, self.background_index] = False
        cams = self.attention(image, present)
        cams = torch.where(present[:, :, None, None], cams, torch.full_like(cams, -1.0))
        if self.background_index is not None:
            cams[:, self.background_index] = self.bg_score
        return cams

    def param_groups(self) -> list[dict[str, Any]]:
        ids = {id(p) for p in self.backbone.parameters()}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return split_backbone_params(self.backbone, rest, self.backbone_lr_scale)
