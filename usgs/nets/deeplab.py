"""DeepLabv3 assembly: a dilated ResNet (or a ViT's patch features) with an ASPP head."""

from __future__ import annotations

from usgs.nets.backbones import backbone as build_backbone
from usgs.nets.heads import BackboneHeadNet, DeepLabV3Head


class DeepLabV3(BackboneHeadNet):
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
