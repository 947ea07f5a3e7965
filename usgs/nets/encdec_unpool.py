"""EncDecUnpool: SegNet-style encoder-decoder (Badrinarayanan et al., TPAMI 2017) on a VGG16-BN encoder.

The seed's Vaihingen model (LucaBon/weakly_semi-supervised_segmentation, ``src/model.py``,
``EncDecUnpoolNet``). The encoder is :class:`usgs.nets.backbones.VGG16BN` (torchvision keys, so
ImageNet weights load with ``weights=/path/vgg16_bn.pth``); each max-pool keeps its argmax indices and
the decoder mirrors the five stages, unpooling with those indices (sharp boundaries without learned
upsampling). Seed defaults: every conv is followed by ReLU and then BN (``block_order="conv_relu_bn"``,
``bn(relu(conv(x)))``, in the encoder too), and element-wise dropout 0.5 is applied right after each
unpooling (``dropout_after_unpool=True``). The suite's variant (``conv_bn_relu`` and channel dropout
after each decoder stage) is one override away. Decoder convs per stage, deepest first: 3, 3, 3, 2, 1,
then a 3x3 conv to the classes (the seed's ``conv1_1_D``). Any input size works (unpooling restores
odd sizes), e.g. the seed's 200 px crops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usgs.nets.backbones import vgg16_bn

# Decoder stages, deepest first: (input channels, output channels, number of 3x3 convs); the last
# conv of a stage changes the channels (conv5_3_D .. conv5_1_D, ..., conv1_2_D of the seed).
_DECODER = ((512, 512, 3), (512, 256, 3), (256, 128, 3), (128, 64, 2), (64, 64, 1))
BLOCK_ORDERS = ("conv_relu_bn", "conv_bn_relu")


def max_unpool(x: Tensor, indices: Tensor, size: tuple[int, int]) -> Tensor:
    """2x2 max-unpooling [B,C,h,w] -> [B,C,*size]: each value back at its argmax, zeros elsewhere.

    ``size`` is the pre-pool size (2h or 2h + 1 rows, same for columns). Same result as
    ``F.max_unpool2d(x, indices, 2, 2, output_size=size)``, written with element-wise ops because
    torch has no deterministic max_unpool2d and the suite trains with deterministic algorithms.
    """
    h, w = 2 * x.shape[-2], 2 * x.shape[-1]
    up = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    where = indices.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    position = torch.arange(size[0] * size[1], device=x.device).view(size)[:h, :w]
    out = up * (where == position).to(x.dtype)
    return F.pad(out, (0, size[1] - w, 0, size[0] - h))  # the row / column the floor pooling dropped


def ordered(x: Tensor, conv: nn.Module, bn: nn.Module, relu: nn.Module, order: str) -> Tensor:
    """``bn(relu(conv(x)))`` for the seed's ``conv_relu_bn``, else ``relu(bn(conv(x)))``."""
    return bn(relu(conv(x))) if order == "conv_relu_bn" else relu(bn(conv(x)))


class _ConvBlock(nn.Sequential):
    """3x3 conv (with bias, as the seed) + BN + ReLU, applied in ``order``."""

    def __init__(self, cin: int, cout: int, order: str) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.order = order

    def forward(self, x: Tensor) -> Tensor:
        return ordered(x, *self, order=self.order)


class EncDecUnpool(nn.Module):
    """VGG16-BN encoder + max-unpool decoder: image [B,3,H,W] -> logits [B,num_classes,H,W].

    ``.backbone`` is the encoder (its parameters can get a smaller learning rate). ``block_order``:
    ``"conv_relu_bn"`` (the seed) or ``"conv_bn_relu"``; ``dropout_after_unpool``: the seed's
    element-wise dropout after each unpooling, else channel dropout after each decoder stage.
    """

    def __init__(self, num_classes: int, weights: str | None = None, dropout: float = 0.5,
                 block_order: str = "conv_relu_bn", dropout_after_unpool: bool = True) -> None:
        super().__init__()
        if block_order not in BLOCK_ORDERS:
            raise ValueError(f"block_order={block_order!r}; valid: {list(BLOCK_ORDERS)}")
        self.backbone = vgg16_bn(weights=weights)
        self.block_order, self.dropout_after_unpool = block_order, dropout_after_unpool
        blocks = []
        for cin, cout, n in _DECODER:
            layers: list[nn.Module] = [_ConvBlock(cin, cin, block_order) for _ in range(n - 1)]
            layers.append(_ConvBlock(cin, cout, block_order))
            if not dropout_after_unpool:
                layers.append(nn.Dropout2d(dropout))
            blocks.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(blocks)
        self.unpool_dropout = nn.Dropout(dropout) if dropout_after_unpool else nn.Identity()
        self.classifier = nn.Conv2d(_DECODER[-1][1], num_classes, 3, padding=1)

    def encode(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, tuple[int, int]]]]:
        """Deepest features and, per pooling, (argmax indices, pre-pool size)."""
        pools: list[tuple[Tensor, tuple[int, int]]] = []
        layers = list(self.backbone.features)
        i = 0
        while i < len(layers):
            if isinstance(layers[i], nn.MaxPool2d):
                size = (x.shape[-2], x.shape[-1])
                x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
                pools.append((indices, size))
                i += 1
                continue
            x = ordered(x, *layers[i : i + 3], order=self.block_order)
            i += 3
        return x, pools

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"EncDecUnpool needs H and W of at least 32 (five 2x2 poolings), got {tuple(x.shape[-2:])}")
        x, pools = self.encode(x)
        for block, (indices, size) in zip(self.decoder, reversed(pools), strict=True):
            x = block(self.unpool_dropout(max_unpool(x, indices, size)))
        return self.classifier(x)
