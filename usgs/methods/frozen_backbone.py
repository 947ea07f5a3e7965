"""A pretrained backbone read as is: the "frozen features" baseline of the evaluation protocols.

``python evaluate.py model=frozen_backbone model.backbone.weights=<DINO file> task=kmeans|linear_probe``
clusters or probes DINO/DINOv2 patch features directly (STEGO's "DINO + k-means" and linear-probe
baselines, Hamilton et al., ICLR 2022) -- nothing is trained.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class FrozenBackbone(nn.Module):
    """``embed(image [B,3,H,W]) -> (L2-normalised features [B,C,H/p,W/p], None)``; no saliency.

    Features stay at the backbone's resolution; the evaluation
    (:class:`usgs.evaluation.features.FeatureSource`) caches them so and reads them at image size
    through :class:`usgs.evaluation.pixel_features.PixelFeatures` (upsampled only where read)
    (``evaluate.py flip=true`` adds the test-time flip).
    """

    pretrained = True  # the weights come from the backbone's file, not from a training run

    def __init__(self, backbone: nn.Module, kmeans_pca_whiten: bool = False) -> None:
        """``kmeans_pca_whiten``: whether ``task=kmeans`` whitens these features (``conf/task/kmeans.yaml``
        reads it). False: PCA-whitening all 1280 / 384 channels of a backbone amplifies its noise
        directions (EfficientNet-Lite0 on Stanford test: 6.3 vs 31.8 mIoU, docs/backbones.md); STEGO's
        and DINO's k-means baselines cluster the L2-normalised features as they are. MaskContrast's
        whitening is for its 32-d projection."""
        super().__init__()
        self.kmeans_pca_whiten = kmeans_pca_whiten
        if not hasattr(backbone, "out_key"):
            raise TypeError(f"{type(backbone).__name__} has no out_key (build it with usgs.nets.backbones.backbone)")
        self.backbone = backbone.eval().requires_grad_(False)

    @torch.no_grad()
    def embed(self, image: Tensor) -> tuple[Tensor, None]:
        features = self.backbone(image)[self.backbone.out_key]
        return F.normalize(features.float(), dim=1), None
