"""Segmentation heads: DeepLabv3's ASPP (torchvision key layout) and its classifier head."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BN -> ReLU, 'same' padding."""
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Sequential):
    """Image-level branch of ASPP: global average pool -> 1x1 conv -> broadcast back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (Chen et al., "Rethinking Atrous Convolution", 2017).

    ``[B,in,h,w] -> [B,out,h,w]``. Rates (12, 24, 36) suit output stride 8, as in DeepLabv3 and
    MaskContrast; use (6, 12, 18) at output stride 16.
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: tuple[int, ...] = (12, 24, 36),
                 dropout: float = 0.5) -> None:
        super().__init__()
        branches: list[nn.Module] = [conv_bn_relu(in_channels, out_channels, 1)]
        branches += [conv_bn_relu(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(out_channels * len(branches), out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3Head(nn.Module):
    """ASPP -> 3x3 conv -> 1x1 classifier. ``features(x)`` gives the [B,channels,h,w] map before it."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = (12, 24, 36),
                 channels: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, channels, rates, dropout)
        self.conv = conv_bn_relu(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.channels = channels

    def features(self, x: Tensor) -> Tensor:
        return self.conv(self.aspp(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class BackboneHeadNet(nn.Module):
    """Shared shape of the segmentation nets: ``backbone`` (``out_key`` map) -> ``head`` -> upsampled logits.

    Subclasses set ``backbone``, ``head`` (with ``features``, ``classifier``, ``channels``) and
    ``num_classes``. ``features(x)`` is the head's map before the classifier (embedding methods
    project it); ``forward(x)`` gives logits ``[B,num_classes,H,W]`` (bilinear).
    """

    backbone: nn.Module
    head: nn.Module
    num_classes: int

    def features(self, x: Tensor) -> Tensor:
        return self.head.features(self.backbone(x)[self.backbone.out_key])

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head.classifier(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def replace_classifier(self, num_classes: int) -> None:
        """Swap the final 1x1 convolution for ``num_classes`` outputs (fine-tuning to new classes)."""
        self.head.classifier = nn.Conv2d(self.head.channels, num_classes, 1)
        self.num_classes = num_classes
