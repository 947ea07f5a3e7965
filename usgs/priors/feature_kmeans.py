"""Frozen-feature k-means prior: k-means of a self-supervised backbone's dense features.

The baseline every recent unsupervised segmentation paper compares with (e.g. STEGO, Hamilton et
al., ICLR 2022, Table 1 "DINO + k-means"): cluster frozen DINO/DINOv2 patch features. Here the
clustering is the colour prior's two-stage recipe (:class:`usgs.priors.kmeans.TorchKMeansPrior`:
per-image k-means, then global k-means of all per-image centres and relabelling; or one global
stage), only the pixel features change: the backbone's L2-normalised patch features, bilinearly
upsampled to the image, optionally with colour and position appended (``colour_weight``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from usgs.data.transforms import normalize
from usgs.priors.kmeans import TorchKMeansPrior, pixel_features


@torch.no_grad()
def dense_backbone_features(backbone: nn.Module, image: np.ndarray, device: torch.device) -> Tensor:
    """L2-normalised features of ``backbone`` (its ``out_key`` map) at every pixel of ``image``: [H*W, C]."""
    x = normalize(image)[None].to(device)
    features = F.normalize(backbone(x)[backbone.out_key].float(), dim=1)
    features = F.interpolate(features, size=image.shape[:2], mode="bilinear", align_corners=False)
    return features[0].flatten(1).T


class FeatureKMeansPrior(TorchKMeansPrior):
    """K-means prior on frozen backbone features (``prior=feature_kmeans``).

    Args:
        backbone: a module returning ``{backbone.out_key: [B,C,h,w]}`` (a ViT or ResNet from
            :func:`usgs.nets.backbones.backbone`, with its pretrained weights); used in eval mode.
        colour_weight: > 0 appends ``colour_space`` colour and ``xy_weight`` position, times this weight.
        **kwargs: :class:`TorchKMeansPrior`'s clustering arguments (``k``, ``local_k``, ``stages`` ...).
    """

    def __init__(self, backbone: nn.Module, colour_weight: float = 0.0, **kwargs: Any) -> None:
        if "model" in kwargs:
            raise ValueError("feature_kmeans clusters its backbone's features; it takes no trained model")
        super().__init__(**kwargs)
        if not hasattr(backbone, "out_key"):
            raise TypeError(f"{type(backbone).__name__} has no out_key (build it with usgs.nets.backbones.backbone)")
        self.backbone = backbone.eval().to(self.device)
        self.colour_weight = float(colour_weight)

    def _features(self, image: np.ndarray) -> Tensor:
        features = dense_backbone_features(self.backbone, image, self.device)
        if self.colour_weight <= 0:
            return features
        colour = pixel_features(image, self.colour_space, self.xy_weight).to(self.device)
        return torch.cat([features, self.colour_weight * colour], dim=1)
