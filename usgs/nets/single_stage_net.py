"""The single-stage network of Araslanov & Roth (CVPR 2020, Sec. 3.2): ResNet / EfficientNet-Lite stages,
ASPP on the deep features, a ``layer1`` skip, Global Cue Injection and a Stochastic Gate (the decoder of the
authors' code). Trained by ``usgs.methods.single_stage.SingleStage``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usgs.nets.backbones import staged_backbone
from usgs.nets.heads import ASPP, conv_bn_relu


class StochasticGate(nn.Module):
    """Stochastic Gate (Araslanov & Roth 2020, Sec. 3.2): deep x1 and shallow x2 features [B,C,H,W].

    Training: each element takes x2 with probability ``psi``, else the rescaled deep feature
    ``(x1 - psi x2) / (1 - psi)`` (so that E[out] = x1); inference: ``(1 - psi) x1 + psi x2``.
    """

    def __init__(self, psi: float = 0.3) -> None:
        super().__init__()
        if not 0.0 <= psi < 1.0:
            raise ValueError(f"psi must be in [0, 1), got {psi}")
        self.psi = psi

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        if not self.training:
            return (1 - self.psi) * x1 + self.psi * x2
        keep_deep = (torch.rand_like(x1) >= self.psi).to(x1.dtype)
        return keep_deep * (x1 - self.psi * x2) / (1 - self.psi) + (1 - keep_deep) * x2


class GlobalCueInjection(nn.Module):
    """Global Cue Injection (Sec. 3.2): shallow [B,Cs,H,W] modulated (AdaIN) by deep [B,C,h,w] -> [B,C,H,W]."""

    def __init__(self, shallow_channels: int, channels: int) -> None:
        super().__init__()
        self.deep = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.BatchNorm2d(2 * channels),
                                  nn.ReLU(inplace=True))
        self.skip = nn.Sequential(nn.Conv2d(shallow_channels, channels, 1, bias=False),
                                  nn.BatchNorm2d(channels, affine=False))
        self.out = conv_bn_relu(channels, channels, kernel_size=1)

    def forward(self, shallow: Tensor, deep: Tensor) -> Tensor:
        gamma, beta = self.deep(deep).flatten(2).amax(-1).chunk(2, dim=1)  # global max: image-level cues
        x = self.skip(shallow) * (gamma[:, :, None, None] + 1) + beta[:, :, None, None]
        return self.out(F.relu(x))


class SingleStageNet(nn.Module):
    """ResNet (or EfficientNet-Lite) + ASPP + GCI + Stochastic Gate decoder: image [B,3,H,W] -> logits
    [B,C,H/4,W/4]. ``backbone``: a name of ``usgs.nets.backbones.STAGED_BACKBONE_NAMES``."""

    def __init__(self, num_classes: int, backbone: str = "resnet50", output_stride: int = 16,
                 channels: int = 256, psi: float = 0.3, aspp_rates: Sequence[int] = (6, 12, 18),
                 weights: str | None = None) -> None:
        super().__init__()
        self.backbone = staged_backbone(backbone, output_stride, weights=weights)
        deep_ch, shallow_ch = self.backbone.channels["layer4"], self.backbone.channels["layer1"]
        self.aspp = ASPP(deep_ch, channels, rates=tuple(aspp_rates))
        self.skip = conv_bn_relu(shallow_ch, 48, kernel_size=1)
        self.fuse = conv_bn_relu(channels + 48, channels)
        self.gci = GlobalCueInjection(shallow_ch, channels)
        self.gate = StochasticGate(psi)
        # Authors' last block: two 3x3 convs with dropout 0.5 / 0.1, then the class scores.
        self.classifier = nn.Sequential(conv_bn_relu(channels, channels), nn.Dropout(0.5),
                                        conv_bn_relu(channels, channels), nn.Dropout(0.1),
                                        nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        deep = self.aspp(feats["layer4"])
        shallow = feats["layer1"]
        deep_up = F.interpolate(deep, size=shallow.shape[-2:], mode="bilinear", align_corners=True)
        deep_x = self.fuse(torch.cat([deep_up, self.skip(shallow)], 1))
        return self.classifier(self.gate(deep_x, self.gci(shallow, deep_x)))
