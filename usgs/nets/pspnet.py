"""PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017) with an optional ClusterNet
spectral-clustering layer between the backbone and the pyramid pooling module (diploma thesis).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from usgs.nets.backbones import staged_backbone
from usgs.nets.spectral import SpectralClustering


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class PyramidPooling(nn.Module):
    """Pyramid pooling module (PSPNet, Sec. 3.2): [B,C,H,W] -> [B,C + len(bins)*channels,H,W].

    Each bin size b average-pools the map to b x b, reduces it with a 1x1 conv + BN + ReLU to
    ``channels`` (default C / len(bins), "to maintain the weight of global feature", PSPNet Sec. 3.2),
    upsamples bilinearly and is concatenated to the input. The thesis used bins (2, 3, 6, 8) in
    place of PSPNet's (1, 2, 3, 6); a 1x1 bin would also break BatchNorm at batch size 1.
    """

    def __init__(
        self, in_channels: int, bins: Sequence[int] = (2, 3, 6, 8), channels: int | None = None
    ) -> None:
        super().__init__()
        if not bins or any(b < 1 for b in bins):
            raise ValueError(f"PyramidPooling: bins must be positive ints, got {list(bins)}")
        self.bins = tuple(bins)
        self.channels = channels or max(1, in_channels // len(self.bins))
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *_conv_bn_relu(in_channels, self.channels, 1))
            for b in self.bins
        )
        self.out_channels = in_channels + len(self.bins) * self.channels

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages
        ]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(nn.Module):
    """PSPNet / ClusterNet: dilated ResNet (or EfficientNet-Lite) -> [spectral clustering] -> PPM -> classifier.

    ``forward(x [B,3,H,W])`` returns ``{"out": logits [B,num_classes,H,W]}`` plus, in training mode
    with ``aux=True``, ``"aux"``: logits of the auxiliary head on layer3 (PSPNet Sec. 4.1, "deep
    supervision"), both upsampled to the input size.
    With ``spectral`` set (ClusterNet), layer4 -> BN -> spectral clustering -> BN feeds the PPM:
    the first BN fixes the scale the channel distances are thresholded at, the second normalises
    the ``spectral.num_clusters`` cluster-mean maps (thesis). ``head_channels=0`` drops PSPNet's
    3x3 block, leaving the thesis's 1x1 classifier on the PPM output.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",  # usgs.nets.backbones.STAGED_BACKBONE_NAMES
        output_stride: int = 8,
        deep_stem: bool = True,
        weights: str | None = None,
        weights_strict: bool = True,
        bins: Sequence[int] = (2, 3, 6, 8),
        ppm_channels: int | None = None,
        head_channels: int = 512,
        aux: bool = True,
        aux_channels: int = 256,
        dropout: float = 0.1,
        spectral: SpectralClustering | None = None,
    ) -> None:
        super().__init__()
        # deep_stem applies to ResNets (the thesis's resnet50_v2); an EfficientNet has its own stem.
        self.backbone = staged_backbone(backbone, output_stride, deep_stem, weights, weights_strict)
        channels = self.backbone.channels["layer4"]
        self.cluster: nn.Module | None = None
        if spectral is not None:
            self.cluster = nn.Sequential(
                nn.BatchNorm2d(channels), spectral, nn.BatchNorm2d(spectral.num_clusters)
            )
            channels = spectral.num_clusters
        self.ppm = PyramidPooling(channels, bins, ppm_channels)
        # PSPNet's final block: 3x3 conv to 512, BN, ReLU, dropout 0.1, 1x1 classifier.
        # head_channels=0: the 1x1 classifier on the PPM output alone (the thesis's ClusterNet).
        if head_channels < 0:
            raise ValueError(f"PSPNet: head_channels must be >= 0 (0 = no 3x3 block), got {head_channels}")
        block = (
            [_conv_bn_relu(self.ppm.out_channels, head_channels, 3), nn.Dropout2d(dropout)]
            if head_channels
            else []
        )
        self.head = nn.Sequential(*block, nn.Conv2d(head_channels or self.ppm.out_channels, num_classes, 1))
        self.aux_head: nn.Module | None = None
        if aux:
            self.aux_head = nn.Sequential(
                _conv_bn_relu(self.backbone.channels["layer3"], aux_channels, 3),
                nn.Dropout2d(dropout),
                nn.Conv2d(aux_channels, num_classes, 1),
            )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        top = feats["layer4"] if self.cluster is None else self.cluster(feats["layer4"])
        logits = self.head(self.ppm(top))
        out = {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}
        if self.aux_head is not None and self.training:
            aux = self.aux_head(feats["layer3"])
            out["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return out
