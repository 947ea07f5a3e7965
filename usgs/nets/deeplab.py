"""DeepLabv3 assembly: a dilated ResNet (or a ViT's patch features) with an ASPP head."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from usgs.nets.backbones import backbone as build_backbone
from usgs.nets.heads import DeepLabV3Head


class DeepLabV3(nn.Module):
    """DeepLabv3 (Chen et al., 2017): ``[B,3,H,W] -> logits [B,num_classes,H,W]`` (bilinear upsampling).

    ``features(x)`` returns the head's ``[B,head_channels,H/os,W/os]`` map before the classifier, used
    by embedding methods (MaskContrast projects it, linear probes read it). ``backbone`` may name a
    DINO/DINOv2 ViT (``vit_small_patch16`` ...): the head then runs on its ``[B,C,H/p,W/p]`` patch map.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", output_stride: int = 8,
                 aspp_rates: tuple[int, ...] = (12, 24, 36), head_channels: int = 256, dropout: float = 0.5,
                 deep_stem: bool = False, weights: str | None = None, weights_strict: bool = True) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, output_stride, deep_stem, weights, weights_strict)
        self.head = DeepLabV3Head(self.backbone.channels[self.backbone.out_key], num_classes, tuple(aspp_rates),
                                  head_channels, dropout)
        self.num_classes = num_classes

    def features(self, x: Tensor) -> Tensor:
        return self.head.features(self.backbone(x)[self.backbone.out_key])

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head.classifier(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def replace_classifier(self, num_classes: int) -> None:
        """Swap the final 1x1 convolution for ``num_classes`` outputs (fine-tuning to new classes)."""
        self.head.classifier = nn.Conv2d(self.head.channels, num_classes, 1)
        self.num_classes = num_classes
