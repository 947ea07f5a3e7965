"""A light head on a backbone's patch features: the segmentation net of frozen-feature methods.

STEGO (Hamilton et al., ICLR 2022) and linear-probe protocols put 1x1 convolutions on frozen DINO
patch features instead of a DeepLab decoder; this is that shape of network for any backbone of
:func:`usgs.nets.backbones.backbone` (most useful with a ViT).
"""

from __future__ import annotations

from torch import Tensor, nn

from usgs.nets.backbones import backbone as build_backbone
from usgs.nets.heads import BackboneHeadNet


class PatchProjection(nn.Module):
    """``features``: optional 1x1 conv -> ReLU -> 1x1 conv residual on the input; ``classifier``: 1x1 conv."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int | None) -> None:
        super().__init__()
        self.nonlinear = None if not hidden else nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, in_channels, 1))
        self.channels = in_channels
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def features(self, x: Tensor) -> Tensor:
        return x if self.nonlinear is None else x + self.nonlinear(x)


class PatchHeadNet(BackboneHeadNet):
    """Backbone patch map ``[B,C,H/p,W/p]`` -> (light head) -> logits ``[B,num_classes,H,W]`` (bilinear).

    Same interface as :class:`usgs.nets.deeplab.DeepLabV3` (``backbone``, ``head.classifier``,
    ``head.channels``, ``features``, ``replace_classifier``), so every method that takes a DeepLab
    takes it. ``freeze_backbone`` keeps the backbone's weights fixed (and in eval mode).
    """

    def __init__(self, num_classes: int, backbone: str = "vit_small_patch16", weights: str | None = None,
                 weights_strict: bool = True, hidden: int | None = None, freeze_backbone: bool = True) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, weights=weights, weights_strict=weights_strict)
        self.head = PatchProjection(self.backbone.channels[self.backbone.out_key], num_classes, hidden)
        self.num_classes = num_classes
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> PatchHeadNet:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self
