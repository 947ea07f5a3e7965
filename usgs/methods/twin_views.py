"""Two random views of one image that share its prior mask, and the map back to common pixels.

Twin training (the k-means-prior seed work) feeds two augmentations x1, x2 of the same image to a
student and a teacher; both predict the same prior mask M and their logits are pulled together.
The seed used photometric augmentations only, so its two views were pixel-aligned for free. Here
each view may also get its own random crop and horizontal flip; the geometry is recorded per view
so that `align_views` can resample both views' logits onto the pixels they have in common.

Geometry convention: a view is the box ``(x0, y0, x1, y1)`` of the ORIGINAL image in normalised
coordinates [0, 1] (box edges at integer pixels), resized to ``size`` and flipped left-right when
``flip == 1``; ``geometry`` float32 [2, 5] holds ``(x0, y0, x1, y1, flip)`` of view 1 and view 2.
Images are resized with half-pixel-centre interpolation (cv2 INTER_LINEAR / INTER_NEAREST_EXACT),
the same convention as ``grid_sample(align_corners=False)``, so the resampling is exact up to
interpolation.
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from usgs.data.transforms import MASK_KEYS, normalize

# albumentations checks PyPI for updates at import unless told not to (no network here).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402  (the env flag must be set before the import)

SECOND_VIEW_SUFFIX = "2"


def seed_photometric() -> A.Compose:
    """The seed's photometric training augmentations, with its albumentations-1.x strengths.

    albumentations 2.x changed several defaults, so the 1.x values the seed ran with are spelled
    out: GaussianBlur kernel 3..7; GaussNoise variance 10..50 on the 0..255 scale (std 3.2..7.1,
    i.e. 0.012..0.028 of the range); ColorJitter 0.2 for brightness/contrast/saturation/hue.
    """
    return A.Compose(
        [
            A.OneOf(
                [A.GaussianBlur(blur_limit=(3, 7), p=0.5), A.GaussNoise(std_range=(0.012, 0.028))], p=0.5
            ),
            A.HueSaturationValue(),
            A.CLAHE(),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2),
        ]
    )


class TwinViews:
    """Joint transform: raw sample dict -> two augmented views sharing the prior mask.

    Output (raw dict, as `usgs.data.base.SegmentationDataset` expects from a transform): view 1
    under the usual keys (``image`` uint8 [h,w,3], ``mask`` / ``prior`` / ``saliency`` [h,w]); view
    2 as tensors ``image2`` float32 [3,h,w] (ImageNet-normalised, like the collated ``image``) and
    ``prior2`` / ``mask2`` / ``saliency2`` int64 [h,w]; and ``geometry`` float32 [2,5] (see module
    docstring).

    Args:
        crop_size: output size, int or (height, width); the seed trained at 128 on Intel images.
        scale: range of each view's crop area as a fraction of the image (values above 1 are
            clipped). Each side is drawn in [sqrt(low), sqrt(high)], so for low > 0.25 any two
            crops of one image overlap (sides > 1/2). (1, 1) = the whole image, as in the seed.
        hflip: flip each view left-right with probability 0.5.
        color_jitter: strength s of an extra SimCLR-style ColorJitter (p = 0.8); 0 = off (the
            seed's photometric set already jitters colours).
        resized_crop: must be True (views are always resized crops); accepted so that this
            transform takes the arguments of `usgs.data.transforms.TrainTransform`, whose config
            node it replaces (Hydra merges the two nodes' keys).
        photometric: apply the seed's photometric augmentations independently to each view.
        same_geometry: both views share one crop/flip (only photometric differences, as in the seed).
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int] = 96,
        scale: tuple[float, float] = (0.5, 1.0),
        hflip: bool = True,
        color_jitter: float = 0.0,
        resized_crop: bool = True,
        photometric: bool = True,
        same_geometry: bool = False,
    ) -> None:
        if isinstance(crop_size, int):
            self.height, self.width = crop_size, crop_size
        else:
            self.height, self.width = int(crop_size[0]), int(crop_size[1])
        low, high = float(scale[0]), min(float(scale[1]), 1.0)
        if not 0.0 < low <= high:
            raise ValueError(
                f"TwinViews: scale must satisfy 0 < low <= high (area fractions), got {tuple(scale)}"
            )
        if not resized_crop:
            raise ValueError("TwinViews: resized_crop must be true (both views are resized crops)")
        self.sides = (float(np.sqrt(low)), float(np.sqrt(high)))
        self.hflip = hflip
        self.same_geometry = same_geometry
        steps: list[A.BasicTransform] = list(seed_photometric().transforms) if photometric else []
        if color_jitter > 0:
            s = float(color_jitter)
            steps.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(s / 4, 0.5), p=0.8))
        self.photometric = A.Compose(steps) if steps else None

    def _box(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int, int]:
        """A random pixel box (x0, y0, x1, y1) and flip bit."""
        bw = max(1, round(width * rng.uniform(*self.sides)))
        bh = max(1, round(height * rng.uniform(*self.sides)))
        x0 = int(rng.integers(0, width - bw + 1))
        y0 = int(rng.integers(0, height - bh + 1))
        flip = int(self.hflip and rng.random() < 0.5)
        return x0, y0, x0 + bw, y0 + bh, flip

    def _view(
        self, sample: dict[str, np.ndarray], box: tuple[int, int, int, int, int]
    ) -> dict[str, np.ndarray]:
        x0, y0, x1, y1, flip = box
        out: dict[str, np.ndarray] = {}
        size = (self.width, self.height)
        image = cv2.resize(sample["image"][y0:y1, x0:x1], size, interpolation=cv2.INTER_LINEAR)
        out["image"] = image
        for key in MASK_KEYS:
            if key in sample:
                crop = np.ascontiguousarray(sample[key][y0:y1, x0:x1])
                out[key] = cv2.resize(crop, size, interpolation=cv2.INTER_NEAREST_EXACT)
        if flip:
            out = {key: np.ascontiguousarray(value[:, ::-1]) for key, value in out.items()}
        if self.photometric is not None:
            out["image"] = self.photometric(image=out["image"])["image"]
        return out

    def __call__(self, sample: dict[str, np.ndarray]) -> dict[str, Any]:
        image = sample.get("image")
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError("TwinViews expects a raw sample with 'image' uint8 [H,W,3]")
        height, width = image.shape[:2]
        # Draw from torch's RNG, which Lightning / the DataLoader seed per worker (albumentations
        # keeps its own generator that nothing reseeds), so runs are reproducible.
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        rng = np.random.default_rng(seed)
        if self.photometric is not None:
            self.photometric.set_random_seed(seed)
        box1 = self._box(rng, height, width)
        box2 = box1 if self.same_geometry else self._box(rng, height, width)
        view1, view2 = self._view(sample, box1), self._view(sample, box2)
        result: dict[str, Any] = dict(sample)
        result.update(view1)
        result["image" + SECOND_VIEW_SUFFIX] = normalize(view2["image"])
        for key in MASK_KEYS:
            if key in view2:
                result[key + SECOND_VIEW_SUFFIX] = torch.from_numpy(view2[key]).long()
        scale = np.array([width, height, width, height, 1], dtype=np.float32)
        result["geometry"] = torch.from_numpy(
            np.stack([np.array(box1, np.float32), np.array(box2, np.float32)]) / scale
        )
        return result


def _grid(geometry: Tensor, frame: Tensor, height: int, width: int) -> Tensor:
    """grid_sample grid [B,h,w,2] that reads a view (box ``geometry`` [B,5]) at the pixel centres of
    the normalised ``frame`` boxes [B,4] of the original image."""
    device, dtype = geometry.device, geometry.dtype
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    # original-image coordinates of the frame's pixel centres
    u = frame[:, 0:1] + xs[None] * (frame[:, 2:3] - frame[:, 0:1])  # [B,w]
    v = frame[:, 1:2] + ys[None] * (frame[:, 3:4] - frame[:, 1:2])  # [B,h]
    # -> the view's [0, 1] coordinates, mirrored when the view was flipped
    tu = (u - geometry[:, 0:1]) / (geometry[:, 2:3] - geometry[:, 0:1]).clamp_min(1e-6)
    tv = (v - geometry[:, 1:2]) / (geometry[:, 3:4] - geometry[:, 1:2]).clamp_min(1e-6)
    tu = torch.where(geometry[:, 4:5] > 0.5, 1.0 - tu, tu)
    gx = (2.0 * tu - 1.0)[:, None, :].expand(-1, height, -1)
    gy = (2.0 * tv - 1.0)[:, :, None].expand(-1, -1, width)
    return torch.stack([gx, gy], dim=-1)


def align_views(logits1: Tensor, logits2: Tensor, geometry: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Resample two views' maps onto the pixels both views cover.

    Args:
        logits1, logits2: [B,C,h,w] maps of view 1 and view 2 (any float tensors, e.g. logits).
        geometry: [B,2,5] view boxes and flips, as written by `TwinViews`.

    Returns:
        ``(a1, a2, overlap)``: a1, a2 [B,C,h,w] sampled (bilinearly, differentiably) at the same
        points of the original image, namely an h x w grid over the intersection of the two boxes;
        ``overlap`` bool [B] is False where the boxes do not intersect (a1, a2 are then meaningless).
    """
    if geometry.ndim != 3 or geometry.shape[1:] != (2, 5):
        raise ValueError(
            f"geometry must be [B,2,5] (x0, y0, x1, y1, flip per view), got {tuple(geometry.shape)}"
        )
    if logits1.shape != logits2.shape or logits1.shape[0] != geometry.shape[0]:
        raise ValueError(
            f"view maps {tuple(logits1.shape)} / {tuple(logits2.shape)} and geometry {tuple(geometry.shape)} do not match"
        )
    geometry = geometry.to(device=logits1.device, dtype=torch.float32)
    g1, g2 = geometry[:, 0], geometry[:, 1]
    frame = torch.cat([torch.maximum(g1[:, :2], g2[:, :2]), torch.minimum(g1[:, 2:4], g2[:, 2:4])], dim=1)
    overlap = (frame[:, 2] > frame[:, 0]) & (frame[:, 3] > frame[:, 1])
    height, width = logits1.shape[-2:]
    out = []
    for logits, g in ((logits1, g1), (logits2, g2)):
        grid = _grid(g, frame, height, width).to(logits.dtype)
        out.append(F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False))
    return out[0], out[1], overlap
