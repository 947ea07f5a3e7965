"""Backbones match torchvision's architectures (parameter counts, key names) and load checkpoint files."""

from __future__ import annotations

import pytest
import torch

from usgs.nets.backbones import resnet, vgg16_bn
from usgs.nets.deeplab import DeepLabV3
from usgs.nets.heads import ASPP


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("name", "torchvision_total", "fc"),
    [
        ("resnet18", 11_689_512, 512 * 1000 + 1000),
        ("resnet50", 25_557_032, 2048 * 1000 + 1000),
        ("resnet101", 44_549_160, 2048 * 1000 + 1000),
    ],
)
def test_resnet_matches_torchvision_parameter_count(name: str, torchvision_total: int, fc: int) -> None:
    # torchvision's published totals include the 1000-way fc layer, which a backbone drops.
    assert n_params(resnet(name)) == torchvision_total - fc


def test_vgg16_bn_features_match_torchvision() -> None:
    net = vgg16_bn()
    classifier = 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert n_params(net) == 138_365_992 - classifier
    keys = set(net.state_dict())
    assert {"features.0.weight", "features.1.running_mean", "features.40.weight", "features.41.bias"} <= keys
    out = net(torch.randn(1, 3, 64, 64))
    assert [tuple(v.shape) for v in out.values()] == [
        (1, 64, 64, 64),
        (1, 128, 32, 32),
        (1, 256, 16, 16),
        (1, 512, 8, 8),
        (1, 512, 4, 4),
    ]


@pytest.mark.parametrize(("output_stride", "size"), [(32, 2), (16, 4), (8, 8)])
def test_resnet_output_stride(output_stride: int, size: int) -> None:
    net = resnet("resnet18", output_stride=output_stride).eval()
    out = net(torch.randn(1, 3, 64, 64))
    assert out["layer4"].shape == (1, 512, size, size)
    assert out["layer1"].shape == (1, 64, 16, 16)
    assert net.channels["layer4"] == 512


def test_deep_stem_and_bottleneck_channels() -> None:
    net = resnet("resnet50", output_stride=8, deep_stem=True).eval()
    assert {"conv2.weight", "bn3.running_var", "layer4.2.conv3.weight"} <= set(net.state_dict())
    out = net(torch.randn(1, 3, 65, 65))
    assert out["stem"].shape[1] == 128 and out["layer4"].shape == (1, 2048, 9, 9)


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="resnet34") as error:
        resnet("resnet34")  # type: ignore[arg-type]
    assert all(name in str(error.value) for name in ("resnet18", "resnet50", "resnet101"))


def test_aspp_and_deeplab_shapes() -> None:
    aspp = ASPP(512, 64, rates=(1, 2, 3)).eval()
    assert aspp(torch.randn(2, 512, 5, 7)).shape == (2, 64, 5, 7)
    assert {"convs.0.0.weight", "convs.4.1.weight", "project.0.weight"} <= set(aspp.state_dict())
    net = DeepLabV3(num_classes=4, backbone="resnet18", output_stride=16).eval()
    x = torch.randn(1, 3, 50, 70)
    assert net(x).shape == (1, 4, 50, 70)
    assert net.features(x).shape == (1, 256, 4, 5)
    net.replace_classifier(9)
    assert net(x).shape == (1, 9, 50, 70)
