"""MaskContrast's two-view augmentation.

The original (``pretrain/data/dataloaders/dataset.py``, ``DatasetKeyQuery``) applies its whole
transform twice per image: the query and the key view each get their own RandomResizedCrop, flip,
colour jitter and grayscale, and so their own saliency mask; both are re-drawn until both masks
have a foreground fraction in range. Here the spatial part runs in the data pipeline
(:class:`MaskContrastTransform`, albumentations on raw dicts; the key view travels as ``image2``
and ``<saliency_key>2``) and the photometric part runs batched on the device inside the module
(:class:`PhotometricAugment`), independently for the two views: the jitter is free on a GPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from usgs.data.transforms import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MASK_KEYS,
    TrainTransform,
    normalize,
)
from usgs.methods.twin_views import SECOND_VIEW_SUFFIX

# ITU-R BT.601 luma weights (what torchvision's rgb_to_grayscale uses).
_LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def foreground_fraction(saliency: np.ndarray) -> float:
    """Fraction of labelled pixels that are foreground (1); 0 when nothing is labelled."""
    labelled = saliency != IGNORE_INDEX
    count = int(labelled.sum())
    return float((saliency[labelled] == 1).sum()) / count if count else 0.0


class MaskContrastTransform(TrainTransform):
    """Query and key crops of one image (raw dict -> raw dict + key-view tensors).

    Paper settings (``resized_crop=True``): RandomResizedCrop to ``crop_size`` (224) with area
    ``scale`` (0.2, 1.0) and a horizontal flip, joint on the image and every mask. With
    ``independent_views`` (the original's ``DatasetKeyQuery``) the key view is a second, independent
    draw, returned as ``image2`` float32 [3,h,w] (normalised) and ``<mask key>2`` int64 [h,w];
    without it both views share the query's crop. The draw is repeated up to ``max_attempts`` times
    while the foreground fraction of ``saliency_key`` in either view lies outside ``fg_range``
    (0.01, 0.99): such a crop has no object, or no background, to contrast. After the last attempt
    the crops are kept; the module skips views without foreground. With ``swap_after`` set (the
    original's rule: 3) the transform instead returns None after that many failed draws, and the
    dataset (:meth:`usgs.data.base.SegmentationDataset.__getitem__`) swaps in a random other image,
    drawn from the sample's seeded generator, which gets one draw (:meth:`redraw`) before the next
    swap. Keep ``color_jitter=0``: the module jitters the two views independently
    (:class:`PhotometricAugment`).

    Args:
        crop_size, scale, hflip, color_jitter, resized_crop: as :class:`TrainTransform`.
        saliency_key: raw key of the foreground mask: "saliency" (the dataset's) or "prior" (make_priors).
        fg_range: accepted foreground fraction (exclusive bounds).
        max_attempts: crop draws before the crops are kept (ignored when ``swap_after`` is set).
        independent_views: draw the key view's crop and flip independently of the query's.
        swap_after: failed draws of an image before it is swapped for another (None: never swap).
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int] = 224,
        scale: tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
        color_jitter: float = 0.0,
        resized_crop: bool = True,
        saliency_key: str = "saliency",
        fg_range: tuple[float, float] = (0.01, 0.99),
        max_attempts: int = 10,
        independent_views: bool = True,
        swap_after: int | None = None,
    ) -> None:
        super().__init__(crop_size, scale, hflip, color_jitter, resized_crop)
        if saliency_key not in MASK_KEYS:
            raise ValueError(f"saliency_key must be one of {MASK_KEYS}, got {saliency_key!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.saliency_key = saliency_key
        self.fg_range = (float(fg_range[0]), float(fg_range[1]))
        self.max_attempts = max_attempts
        self.independent_views = independent_views
        if swap_after is not None and swap_after < 1:
            raise ValueError(f"swap_after must be >= 1 or None, got {swap_after}")
        self.swap_after = swap_after

    def _ok(self, view: dict[str, np.ndarray]) -> bool:
        return self.fg_range[0] < foreground_fraction(view[self.saliency_key]) < self.fg_range[1]

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        """Both views of ``sample``; None when ``swap_after`` is set and every draw failed."""
        if self.swap_after is None:
            return self._draw(sample, self.max_attempts, keep_last=True)
        return self._draw(sample, self.swap_after, keep_last=False)

    def redraw(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        """One draw of a swapped-in image (the original tries it once before the next swap)."""
        return self._draw(sample, 1, keep_last=False)

    def _draw(self, sample: dict[str, Any], attempts: int, keep_last: bool) -> dict[str, Any] | None:
        if self.saliency_key not in sample:
            raise KeyError(f"MaskContrastTransform: sample has no {self.saliency_key!r} mask (keys: "
                           f"{sorted(sample)}); set saliency_key, or data.prior=saliency_* for 'prior'")
        for _ in range(attempts):
            query = super().__call__(sample)  # re-seeds from torch's RNG: a fresh crop every call
            key = super().__call__(sample) if self.independent_views else query
            ok = self._ok(query) and self._ok(key)
            if ok:
                break
        if not ok and not keep_last:
            return None
        if not self.independent_views:
            return query
        out: dict[str, Any] = dict(query)
        out["image" + SECOND_VIEW_SUFFIX] = normalize(key["image"])
        for name in MASK_KEYS:
            if name in key:
                out[name + SECOND_VIEW_SUFFIX] = torch.from_numpy(key[name].astype(np.int64))
        return out


def _per_sample(n: int, low: float, high: float, device: torch.device) -> Tensor:
    return torch.empty(n, 1, 1, 1, device=device).uniform_(low, high)


class PhotometricAugment:
    """Batched MoCo v2 colour augmentation on ImageNet-normalised images [B,3,H,W] (same shape out).

    ColorJitter(brightness, contrast, saturation, hue) = (0.4, 0.4, 0.4, 0.1) with probability 0.8,
    then grayscale with probability 0.2, each drawn per sample from torch's RNG. Brightness scales,
    contrast and saturation blend with the image's mean grey / its grey image (torchvision's
    definitions); hue rotates the YIQ chroma plane by ``2*pi*h`` (a linear stand-in for the HSV hue
    shift that keeps the op one matmul on the device).
    """

    def __init__(self, jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 jitter_p: float = 0.8, gray_p: float = 0.2) -> None:
        self.brightness, self.contrast, self.saturation, self.hue = (float(v) for v in jitter)
        self.jitter_p = float(jitter_p)
        self.gray_p = float(gray_p)

    @staticmethod
    def _gray(x: Tensor) -> Tensor:
        w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)

    def _hue(self, x: Tensor, angle: Tensor) -> Tensor:
        to_yiq = torch.tensor(_RGB_TO_YIQ, device=x.device, dtype=x.dtype)
        yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
        cos, sin = torch.cos(angle), torch.sin(angle)
        i, q = yiq[:, 1:2], yiq[:, 2:3]
        yiq = torch.cat([yiq[:, :1], cos * i - sin * q, sin * i + cos * q], dim=1)
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)

    def __call__(self, image: Tensor) -> Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        x = (image * std + mean).clamp(0.0, 1.0)
        n, dev = x.shape[0], x.device
        jittered = x * _per_sample(n, 1 - self.brightness, 1 + self.brightness, dev)
        jittered = jittered.clamp(0.0, 1.0)
        grey_mean = self._gray(jittered).mean(dim=(2, 3), keepdim=True)
        c = _per_sample(n, 1 - self.contrast, 1 + self.contrast, dev)
        jittered = ((jittered - grey_mean) * c + grey_mean).clamp(0.0, 1.0)
        s = _per_sample(n, 1 - self.saturation, 1 + self.saturation, dev)
        grey = self._gray(jittered)
        jittered = ((jittered - grey) * s + grey).clamp(0.0, 1.0)
        angle = _per_sample(n, -self.hue, self.hue, dev) * (2 * math.pi)
        jittered = self._hue(jittered, angle).clamp(0.0, 1.0)
        apply = torch.rand(n, 1, 1, 1, device=dev) < self.jitter_p
        x = torch.where(apply, jittered, x)
        to_gray = torch.rand(n, 1, 1, 1, device=dev) < self.gray_p
        x = torch.where(to_gray, self._gray(x).expand_as(x), x)
        return (x - mean) / std
