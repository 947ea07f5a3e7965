"""SegNet-style encoder-decoder (Badrinarayanan et al., TPAMI 2017) on a VGG16-BN encoder.

The encoder is :class:`usgs.nets.backbones.VGG16BN` (torchvision keys, so ImageNet weights load with
``weights=/path/vgg16_bn.pth``); each max-pool keeps its argmax indices and the decoder mirrors the
five stages, unpooling with those indices (sharp boundaries without learned upsampling) followed by
conv-BN-ReLU blocks. Dropout 0.5 after every decoder block, as in the seed's Vaihingen model
(Bayesian SegNet's placement regularises the small pixel-labelled training set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usgs.nets.backbones import vgg16_bn
from usgs.nets.heads import conv_bn_relu

# Decoder stages, deepest first: (input channels, output channels, number of 3x3 conv blocks),
# the mirror of VGG16's (2, 2, 3, 3, 3) convolutions per stage.
_DECODER = ((512, 512, 3), (512, 256, 3), (256, 128, 3), (128, 64, 2), (64, 64, 2))


def max_unpool(x: Tensor, indices: Tensor) -> Tensor:
    """2x2 max-unpooling [B,C,h,w] -> [B,C,2h,2w]: each value back at its argmax, zeros elsewhere.

    Same result as ``F.max_unpool2d(x, indices, 2, 2)``, written with element-wise ops because
    torch has no deterministic max_unpool2d and the suite trains with deterministic algorithms.
    """
    h, w = 2 * x.shape[-2], 2 * x.shape[-1]
    up = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    where = indices.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    position = torch.arange(h * w, device=x.device).view(h, w)
    return up * (where == position).to(x.dtype)


class EncDecUnpool(nn.Module):
    """VGG16-BN encoder + max-unpool decoder: image [B,3,H,W] -> logits [B,num_classes,H,W].

    H and W must be multiples of 32 (five 2x2 poolings). ``.backbone`` is the encoder (its
    parameters can get a smaller learning rate).
    """

    def __init__(self, num_classes: int, weights: str | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        self.backbone = vgg16_bn(weights=weights)
        blocks = []
        for cin, cout, n in _DECODER:
            layers: list[nn.Module] = [conv_bn_relu(cin, cin) for _ in range(n - 1)]
            blocks.append(nn.Sequential(*layers, conv_bn_relu(cin, cout), nn.Dropout2d(dropout)))
        self.decoder = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(_DECODER[-1][1], num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"EncDecUnpool needs H and W divisible by 32, got {tuple(x.shape[-2:])}")
        pools: list[Tensor] = []
        for layer in self.backbone.features:
            if isinstance(layer, nn.MaxPool2d):
                x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
                pools.append(indices)
            else:
                x = layer(x)
        for block, indices in zip(self.decoder, reversed(pools), strict=True):
            x = block(max_unpool(x, indices))
        return self.classifier(x)
