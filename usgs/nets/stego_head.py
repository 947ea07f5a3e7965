"""STEGO's segmentation head and cluster probe (Hamilton et al., ICLR 2022), plain nn.Modules.

Source: ``mhamilton723/STEGO src/modules.py`` @ 8c1ad0a9: ``DinoFeaturizer`` (lines 33, 68-81,
108-118: ``cluster1`` linear + ``cluster2`` nonlinear 1x1 projections of dropped-out features) and
``ClusterLookup`` (lines 134-161).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Projection = Literal["linear", "nonlinear"]


class StegoHead(nn.Module):
    """Code ``[B,dim,h,w]`` of frozen features ``[B,C,h,w]``: a linear 1x1 projection, plus (``nonlinear``)
    a 1x1 -> ReLU -> 1x1 branch, both reading the features through ``Dropout2d(dropout)``.

    ``forward`` returns ``(features, code)``; the features are dropped out too when ``feature_dropout``
    (the original's ``dropout: True``, train_config.yml:40), as its loss reads them so.
    """

    def __init__(self, in_channels: int, dim: int = 70, projection: Projection = "nonlinear",
                 dropout: float = 0.1, feature_dropout: bool = True) -> None:
        super().__init__()
        if projection not in ("linear", "nonlinear"):
            raise ValueError(f"Unknown projection {projection!r}; valid: linear, nonlinear")
        self.dropout = nn.Dropout2d(p=dropout)
        self.feature_dropout = feature_dropout
        self.cluster1 = nn.Conv2d(in_channels, dim, 1)
        self.cluster2 = (nn.Sequential(nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(),
                                       nn.Conv2d(in_channels, dim, 1)) if projection == "nonlinear" else None)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        code = self.cluster1(self.dropout(features))
        if self.cluster2 is not None:
            code = code + self.cluster2(self.dropout(features))
        return (self.dropout(features) if self.feature_dropout else features), code


class ClusterLookup(nn.Module):
    """``n_clusters`` learnt centres on the unit sphere; cosine similarity of L2-normalised codes.

    ``forward(x [B,D,H,W], alpha)`` -> ``(loss, probs [B,K,H,W])``: with ``alpha=None`` the probs are
    the one-hot nearest centre and the loss is minus the mean cosine to it (spherical k-means as a
    loss); otherwise ``softmax(alpha * cosine)``. ``log_probs(x, alpha)``: ``log_softmax(alpha * cosine)``
    (the evaluation uses alpha 2, eval_segmentation.py:131).
    """

    def __init__(self, dim: int, n_clusters: int) -> None:
        super().__init__()
        self.clusters = nn.Parameter(torch.randn(n_clusters, dim))

    def inner_products(self, x: Tensor) -> Tensor:
        return torch.einsum("bchw,nc->bnhw", F.normalize(x, dim=1), F.normalize(self.clusters, dim=1))

    def forward(self, x: Tensor, alpha: float | None = None) -> tuple[Tensor, Tensor]:
        inner = self.inner_products(x)
        if alpha is None:
            probs = F.one_hot(inner.argmax(1), self.clusters.shape[0]).permute(0, 3, 1, 2).to(inner.dtype)
        else:
            probs = torch.softmax(inner * alpha, dim=1)
        return -(probs * inner).sum(1).mean(), probs

    def log_probs(self, x: Tensor, alpha: float) -> Tensor:
        return torch.log_softmax(self.inner_products(x) * alpha, dim=1)
