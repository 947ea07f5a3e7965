"""VGG16-BN's fully connected classifier head (Simonyan & Zisserman, ICLR 2015), torchvision layout.

The image-level WSSS seed (Amsterdam-Internships/Image-Level-Supervised-Semantic-Segmentation,
``src/seed/train_seed.py``) classifies with torchvision's whole ``vgg16_bn``: the convolutional
``features`` (:class:`usgs.nets.backbones.VGG16BN`, keys ``features.N``), the last 2x2 max-pool,
adaptive average pooling to 7x7 and three linear layers, the last one replaced for the dataset's
classes (``vgg.classifier[6] = nn.Linear(4096, num_classes)``). Its Grad-CAM therefore sees the
gradient through the fully connected layers, unlike a global-average-pooling head, whose Grad-CAM
equals its CAM. Keys ``classifier.0``, ``classifier.3``, ``classifier.6`` as in torchvision.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from usgs.nets.weights import RANDOM, read_state_dict

# torchvision's VGG: 512 channels pooled to 7x7 before the first linear layer.
POOLED_SIZE = 7


class VGGClassifierHead(nn.Module):
    """``stage5`` features [B,C,h,w] (before VGG's last max-pool) -> class scores [B,num_classes].

    max-pool 2x2 -> adaptive average pool 7x7 -> flatten -> Linear(C*49, hidden) -> ReLU -> Dropout
    -> Linear(hidden, hidden) -> ReLU -> Dropout -> Linear(hidden, num_classes). ``hidden`` is 4096 in
    VGG; a smaller value only for tests. ``weights``: a torchvision ``vgg16_bn`` file whose
    ``classifier.0`` and ``classifier.3`` are loaded (``classifier.6`` is the new class layer).
    """

    def __init__(self, num_classes: int, in_channels: int = 512, hidden: int = 4096, dropout: float = 0.5,
                 weights: str | None = None) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * POOLED_SIZE * POOLED_SIZE, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        if weights and weights != RANDOM:
            load_pretrained_head(self, weights)

    def forward(self, features: Tensor) -> Tensor:
        x = F.max_pool2d(features, 2, 2)  # torchvision's features.43
        x = F.adaptive_avg_pool2d(x, POOLED_SIZE)
        return self.classifier(torch.flatten(x, 1))


def load_pretrained_head(head: VGGClassifierHead, path: str | Path) -> None:
    """Load ``classifier.0`` and ``classifier.3`` of a torchvision ``vgg16_bn`` file; error lists what is missing."""
    blob = read_state_dict(path)  # the one weight-file reader: missing file, pickles, checkpoint levels
    wanted = [k for k in head.state_dict() if not k.startswith("classifier.6.")]
    missing = [k for k in wanted if k not in blob]
    if missing:
        raise KeyError(f"{path}: missing {missing} (expected torchvision vgg16_bn keys classifier.0/3.*)")
    head.load_state_dict({k: blob[k] for k in wanted}, strict=False)
