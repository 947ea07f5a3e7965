"""Backbones with torchvision-compatible state-dict keys: ResNet-18/50/101 and VGG16-BN.

Key names follow ``torchvision.models`` exactly, so torchvision or MoCo checkpoint files load from a
path or a registered name (:mod:`usgs.nets.zoo`) with :func:`usgs.nets.weights.load_weights`
(torchvision itself is never imported). :func:`backbone` builds any of them, a DINO/DINOv2 ViT
(:mod:`usgs.nets.vit`) or an EfficientNet-Lite (:mod:`usgs.nets.efficientnet`) by name.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from usgs.errors import ConfigError
from usgs.nets.conv_init import init_conv_bn
from usgs.nets.efficientnet import EFFICIENTNET_SPECS, EfficientNetLite, efficientnet_lite
from usgs.nets.vit import VIT_SPECS, VisionTransformer, vit
from usgs.nets.weights import load_weights
from usgs.nets.zoo import REGISTRY

ResNetName = Literal["resnet18", "resnet50", "resnet101"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34). Supports dilation, unlike torchvision's."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, dilated) -> 1x1 block of ResNet-50/101 (stride on the 3x3, 'ResNet v1.5')."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_RESNET_SPECS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}

# Which of layer2..layer4 trade their stride for dilation (DeepLab, Chen et al. 2017).
_DILATE_FOR_STRIDE: dict[int, tuple[bool, bool, bool]] = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}


class ResNet(nn.Module):
    """ResNet (He et al., CVPR 2016) returning multi-scale features.

    ``forward(x [B,3,H,W]) -> {"stem": [B,64|128,H/4,W/4], "layer1": ..., "layer4": [B,C4,H/os,W/os]}``.
    ``output_stride`` 8 or 16 replaces strides by dilation (DeepLab); ``deep_stem`` uses three 3x3
    convolutions (PSPNet, Zhao et al., CVPR 2017; keys ``conv1..3``/``bn1..3`` as in its release).
    """

    out_key = "layer4"  # the deepest map, read by segmentation heads
    stages = ("stem", "layer1", "layer2", "layer3", "layer4")  # forward order, for frozen_stages

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int],
                 output_stride: int = 32, deep_stem: bool = False) -> None:
        super().__init__()
        if output_stride not in _DILATE_FOR_STRIDE:
            raise ValueError(f"output_stride must be one of {sorted(_DILATE_FOR_STRIDE)}, got {output_stride}")
        self.deep_stem = deep_stem
        self.inplanes = 128 if deep_stem else 64
        self.dilation = 1
        if deep_stem:
            self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.conv2 = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(64)
            self.conv3 = nn.Conv2d(64, 128, 3, 1, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(128)
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stem_channels = self.inplanes
        dilate = _DILATE_FOR_STRIDE[output_stride]
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=dilate[2])
        e = block.expansion
        self.channels = {"stem": stem_channels, "layer1": 64 * e, "layer2": 128 * e,
                         "layer3": 256 * e, "layer4": 512 * e}
        self.output_stride = output_stride
        self.feature_map = nn.Identity()  # no weights: the hook point of layer4 (Grad-CAM's layer)
        init_conv_bn(self)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        modules = [block(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes * block.expansion
        modules += [block(self.inplanes, planes, 1, self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        """The modules of one of ``stem, layer1..layer4`` (what ``frozen_stages`` freezes)."""
        if stage == "stem":
            names = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3") if self.deep_stem else ("conv1", "bn1")
            return [getattr(self, n) for n in names]
        if stage not in self.stages:
            raise KeyError(f"unknown stage {stage!r}; stages: {list(self.stages)}")
        return [getattr(self, stage)]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.deep_stem:
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        stem = self.maxpool(x)
        l1 = self.layer1(stem)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.feature_map(self.layer4(l3))
        return {"stem": stem, "layer1": l1, "layer2": l2, "layer3": l3, "layer4": l4}


def resnet(name: ResNetName = "resnet50", output_stride: int = 32, deep_stem: bool = False,
           weights: str | None = None, weights_strict: bool = True) -> ResNet:
    """Build a ResNet by name, optionally loading a local torchvision/MoCo/Lightning weight file."""
    if name not in _RESNET_SPECS:
        raise ValueError(f"Unknown backbone {name!r}; valid names: {', '.join(sorted(_RESNET_SPECS))}")
    block, layers = _RESNET_SPECS[name]
    net = ResNet(block, layers, output_stride=output_stride, deep_stem=deep_stem)
    if weights:
        load_weights(net, weights, strict=weights_strict)
    return net


# torchvision's vgg16_bn 'features' configuration; "M" = 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                     512, 512, 512, "M", 512, 512, 512, "M")


class VGG16BN(nn.Module):
    """VGG16 with batch norm (Simonyan & Zisserman, ICLR 2015), torchvision keys ``features.N``.

    ``forward(x [B,3,H,W]) -> {"stage1": [B,64,H,W], ..., "stage5": [B,512,H/16,W/16]}``: the output of
    each block's last ReLU, before its max-pool (``features.42`` is the last ReLU, Grad-CAM's layer).
    Pooling with ``return_indices`` for SegNet-style decoders is available through ``pool_indices=True``.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.channels = {f"stage{i}": c for i, c in enumerate((64, 128, 256, 512, 512), start=1)}
        self.stage_ends = [i - 1 for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        stage = 1
        for i, layer in enumerate(self.features):
            if isinstance(layer, nn.MaxPool2d):
                continue  # the stage's pooled output is the next stage's input
            x = layer(x)
            if i in self.stage_ends:
                out[f"stage{stage}"] = x
                stage += 1
                x = nn.functional.max_pool2d(x, 2, 2)
        return out


def vgg16_bn(weights: str | None = None, weights_strict: bool = True) -> VGG16BN:
    """Build VGG16-BN, optionally loading a local torchvision checkpoint file (``classifier.*`` is ignored)."""
    net = VGG16BN()
    if weights:
        load_weights(net, weights, strict=weights_strict)
    return net


# Backbones with ResNet-like stages (stem, layer1..layer4 at strides 4|2, 4, 8, 16, 32 / dilated): what
# PSPNet's auxiliary head (layer3), the single-stage skip (layer1) and frozen_stages need.
STAGED_BACKBONE_NAMES: tuple[str, ...] = (*sorted(_RESNET_SPECS), *sorted(EFFICIENTNET_SPECS))
BACKBONE_NAMES: tuple[str, ...] = (*STAGED_BACKBONE_NAMES, *sorted(VIT_SPECS))


def backbone(name: str, output_stride: int = 32, deep_stem: bool = False, weights: str | None = None,
             weights_strict: bool = True) -> ResNet | EfficientNetLite | VisionTransformer:
    """A ResNet, EfficientNet-Lite or ViT by name; its ``out_key`` output (``channels[out_key]`` wide) feeds
    a head. ``weights``: a local file, a registered name (``efficientnet_lite0``, ``dino_vits16`` ...,
    ``python -m usgs.nets.zoo list``) or ``random``.

    A ViT's stride is its patch size: ``output_stride`` applies to ResNets and EfficientNets;
    ``deep_stem`` to ResNets only (the others have one stem).
    """
    if name not in BACKBONE_NAMES:
        raise ValueError(f"Unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
    # A registered name says which network its file is for: refuse another backbone in one line (e.g. an
    # experiment whose default is efficientnet_lite0 ImageNet weights, with only the backbone overridden).
    if isinstance(weights, str) and weights in REGISTRY and (expected := REGISTRY[weights].backbone.split()[0]) != name:
        raise ConfigError(f"weights {weights!r} are for backbone {expected!r}, not {name!r}: give weights=random, "
                          f"null, a {name} file or a {name} name (python -m usgs.nets.zoo list)")
    if name in VIT_SPECS:
        return vit(name, weights=weights, weights_strict=weights_strict)
    if name in EFFICIENTNET_SPECS:
        return efficientnet_lite(name, output_stride, weights, weights_strict)
    return resnet(name, output_stride, deep_stem, weights, weights_strict)  # type: ignore[arg-type]


def staged_backbone(name: str, output_stride: int = 32, deep_stem: bool = False, weights: str | None = None,
                    weights_strict: bool = True) -> ResNet | EfficientNetLite:
    """:func:`backbone` restricted to :data:`STAGED_BACKBONE_NAMES` (heads that read layer1 / layer3)."""
    if name not in STAGED_BACKBONE_NAMES:
        raise ValueError(f"Backbone {name!r} has no ResNet-like stages; valid names: {', '.join(STAGED_BACKBONE_NAMES)}")
    return backbone(name, output_stride, deep_stem, weights, weights_strict)  # type: ignore[return-value]
