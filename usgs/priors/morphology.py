"""Morphological smoothing of label-map priors, composable with any mask prior.

The seed k-means recipe smooths each prior with ``MORPH_CLOSE`` then ``MORPH_OPEN`` and a 5x5
ellipse, applied to the uint8 label map as a grey image (what ``cv2.morphologyEx`` does on a
label map: closing fills thin gaps with the larger neighbouring id, opening removes specks).
Optionally, connected components smaller than ``min_area`` pixels are then set to ``fill``
(255 = ignore by default), the way MaskContrast drops saliency blobs under 1% of the image.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

__all__ = ["Morphology", "remove_small_components"]

_SHAPES = {"ellipse": cv2.MORPH_ELLIPSE, "rect": cv2.MORPH_RECT, "cross": cv2.MORPH_CROSS}


def remove_small_components(
    mask: np.ndarray, min_area: float, fill: int = 255, ignore_index: int = 255
) -> np.ndarray:
    """Set every 8-connected same-label component with fewer than ``min_area`` pixels to ``fill``.

    ``min_area`` < 1 is a fraction of the image area (e.g. 0.01 = 1%); >= 1 is a pixel count.
    Pixels equal to ``ignore_index`` are never counted as a component.
    """
    area = min_area * mask.size if 0 < min_area < 1 else min_area
    out = mask.copy()
    if area <= 0:
        return out
    for value in np.unique(mask):
        if value == ignore_index:
            continue
        count, comp, stats, _ = cv2.connectedComponentsWithStats(
            (mask == value).astype(np.uint8), connectivity=8
        )
        small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < area) + 1
        if small.size:
            out[np.isin(comp, small)] = fill
    return out


class Morphology:
    """Close-then-open smoothing of a uint8 label map [H,W] (the seed's post-process).

    Args:
        kernel: structuring element size in pixels (odd; the seed uses 5). 0 or 1 disables close/open.
        shape: structuring element shape ("ellipse" in the seed).
        min_area: drop same-label components below this area (fraction of the image if < 1, else
            pixels); 0 keeps everything.
        fill: value written where small components are dropped (255 = ignore).
    """

    def __init__(
        self,
        kernel: int = 5,
        shape: Literal["ellipse", "rect", "cross"] = "ellipse",
        min_area: float = 0.0,
        fill: int = 255,
    ) -> None:
        if shape not in _SHAPES:
            raise ValueError(f"unknown morphology shape {shape!r}; valid: {sorted(_SHAPES)}")
        if kernel < 0:
            raise ValueError(f"morphology kernel must be >= 0, got {kernel}")
        self.kernel = int(kernel)
        self.shape = shape
        self.min_area = float(min_area)
        self.fill = int(fill)
        self._element = cv2.getStructuringElement(_SHAPES[shape], (kernel, kernel)) if kernel > 1 else None

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        if mask.dtype != np.uint8 or mask.ndim != 2:
            raise ValueError(f"Morphology expects a uint8 [H,W] label map, got {mask.dtype} {mask.shape}")
        out = mask
        if self._element is not None:
            out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, self._element)
            out = cv2.morphologyEx(out, cv2.MORPH_OPEN, self._element)
        if self.min_area > 0:
            out = remove_small_components(out, self.min_area, self.fill)
        return out

    def __repr__(self) -> str:
        return f"Morphology(kernel={self.kernel}, shape={self.shape!r}, min_area={self.min_area}, fill={self.fill})"
