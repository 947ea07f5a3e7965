"""Pixel-Adaptive Mask Refinement (PAMR), Araslanov & Roth, "Single-Stage Semantic Segmentation
from Image Labels", CVPR 2020, Sec. 3.3.

PAMR refines coarse class masks by repeatedly averaging each pixel's mask over its neighbours, with
weights given by the local image affinity: ``alpha(i, j) = softmax_j(-|I_i - I_j| / (0.1 * sigma_i))``,
averaged over the colour channels, where ``sigma_i`` is the standard deviation of the image over the
pixel's (multi-dilation) 3x3 neighbourhoods. Several dilations give a large but sparse neighbourhood.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The 8 neighbours of a 3x3 window as (row, col) offsets, in raster order without the centre.
_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _shifted(x: Tensor, dilations: tuple[int, ...], with_centre: bool) -> Tensor:
    """Neighbour values of every pixel: x [B,K,H,W] -> [B,K,P,H,W] with P = (8 or 9) * len(dilations).

    Borders are replicate-padded, as in the authors' implementation, so that border pixels do not
    attend to zeros.
    """
    _, _, h, w = x.shape
    offsets = ([(0, 0)] if with_centre else []) + _NEIGHBOURS
    out = []
    for d in dilations:
        padded = F.pad(x, [d, d, d, d], mode="replicate")
        for dy, dx in offsets:
            out.append(padded[:, :, d + dy * d: d + dy * d + h, d + dx * d: d + dx * d + w])
    return torch.stack(out, dim=2)


class PAMR(nn.Module):
    """Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), parameter-free.

    ``forward(image [B,3,H,W], masks [B,C,h,w]) -> [B,C,h,w]``: the image is resized to the mask
    resolution, the affinities are computed once and ``num_iter`` propagation steps are applied. Each
    step is a convex combination of neighbouring mask values, so probabilities stay probabilities.

    Defaults are the paper's: 10 iterations, dilations (1, 2, 4, 8, 12, 24).
    """

    def __init__(self, num_iter: int = 10, dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)) -> None:
        super().__init__()
        if num_iter < 0 or not dilations or min(dilations) < 1:
            raise ValueError(f"PAMR needs num_iter >= 0 and positive dilations, got {num_iter}, {dilations}")
        self.num_iter = num_iter
        self.dilations = tuple(int(d) for d in dilations)

    def affinity(self, image: Tensor) -> Tensor:
        """Normalised affinities [B,1,P,H,W] (softmax over the P = 8 * len(dilations) neighbours)."""
        std = _shifted(image, self.dilations, with_centre=True).std(dim=2, keepdim=True)
        diff = (_shifted(image, self.dilations, with_centre=False) - image.unsqueeze(2)).abs()
        # 0.1 * sigma is the paper's temperature; 1e-8 avoids 0/0 on flat patches.
        logits = -diff / (1e-8 + 0.1 * std)
        return F.softmax(logits.mean(dim=1, keepdim=True), dim=2)

    @torch.no_grad()
    def forward(self, image: Tensor, masks: Tensor) -> Tensor:
        if image.ndim != 4 or masks.ndim != 4 or image.shape[0] != masks.shape[0]:
            raise ValueError(f"PAMR expects image [B,3,H,W] and masks [B,C,h,w], got "
                             f"{tuple(image.shape)} and {tuple(masks.shape)}")
        image = F.interpolate(image.float(), size=masks.shape[-2:], mode="bilinear", align_corners=True)
        aff = self.affinity(image)
        for _ in range(self.num_iter):
            masks = (_shifted(masks, self.dilations, with_centre=False) * aff).sum(dim=2)
        return masks
