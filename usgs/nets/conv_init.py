"""The random initialisation of the convolutional backbones (ResNet, EfficientNet-Lite).

Both originals draw conv kernels from N(0, 2 / fan_out) (He et al. 2015, ``mode="fan_out"``:
torchvision's ResNet and the TF EfficientNet release) and start batch norm at weight 1, bias 0.
"""

from __future__ import annotations

from torch import nn


def init_conv_bn(module: nn.Module) -> None:
    """He (fan-out) normal conv kernels, BN weight 1 and bias 0, for every submodule of ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
