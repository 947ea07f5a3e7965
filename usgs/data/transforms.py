"""Joint image/mask transforms on RAW sample dicts, plus the ImageNet normalisation constants.

A transform is any callable ``dict[str, np.ndarray] -> dict[str, np.ndarray]`` on the raw dict of
`usgs.data.base.SegmentationDataset.load` (``image`` uint8 [H,W,3]; ``mask``, ``saliency``,
``prior`` uint8 [H,W] with 255 = ignore). Methods may write their own (e.g. two views of one image);
the two here cover the usual train / eval pipelines with albumentations.

Masks are always resized with nearest neighbour and padded with 255, so ignore pixels stay ignore and
resizing never invents label values.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

# albumentations checks PyPI for updates at import unless told not to (no network here).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402  (the env flag must be set before the import)

# ImageNet statistics: every backbone in usgs/nets is initialised from ImageNet-trained weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Mask-like keys transformed jointly with the image (nearest neighbour, padded with ignore).
MASK_KEYS = ("mask", "saliency", "prior")
IGNORE_INDEX = 255


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] RGB -> float32 [3,H,W], ImageNet mean/std normalised."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H,W,3] RGB image, got {image.dtype} {image.shape}")
    tensor = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of the batch normalisation: float [B,3,H,W] -> uint8 [B,H,W,3] on the input's device."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected [B,3,H,W], got {tuple(image.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    rgb = (image * std + mean).clamp(0.0, 1.0).mul(255.0).round()
    return rgb.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


class _AlbumentationsTransform:
    """Runs an albumentations pipeline on the keys present in a raw dict; other keys pass through."""

    def __init__(self, transforms: list[A.BasicTransform]) -> None:
        # `mask` is albumentations' own mask target; the others are declared as extra masks.
        self._compose = A.Compose(transforms, additional_targets={"saliency": "mask", "prior": "mask"})

    def _reseed(self) -> None:
        """Draw this call's augmentation seed from torch's RNG.

        albumentations keeps its own generator, which neither `seed_everything` nor the DataLoader
        reseeds; torch's RNG is seeded per worker from the loader's (seeded) generator, so drawing
        from it makes augmentations reproducible for any `num_workers`.
        """
        self._compose.set_random_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))

    def __call__(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._reseed()
        return self._apply(sample)

    def _apply(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        targets = {key: sample[key] for key in ("image", *MASK_KEYS) if key in sample}
        out = self._compose(**targets)
        result = dict(sample)
        result.update({key: out[key] for key in targets})
        return result


def _padded_center_crop(height: int, width: int) -> list[A.BasicTransform]:
    """Central ``height`` x ``width`` crop; smaller images padded (image 0, masks ignore) first."""
    return [
        A.PadIfNeeded(min_height=height, min_width=width, border_mode=cv2.BORDER_CONSTANT, fill=0,
                      fill_mask=IGNORE_INDEX),
        A.CenterCrop(height=height, width=width),
    ]


class TrainTransform(_AlbumentationsTransform):
    """Training augmentation: random scale + random crop (DeepLab recipe) and horizontal flip.

    DeepLab (Chen et al., 2017) trains on random scales in [0.5, 2.0] and fixed-size crops padded with
    the ignore label; ``resized_crop=True`` uses an Inception-style RandomResizedCrop instead, where
    ``scale`` is the crop's area fraction (the MoCo / MaskContrast augmentation).

    Args:
        crop_size: output size (int = square, or (height, width)).
        scale: random scale factors (or area fractions when ``resized_crop``).
        hflip: horizontal flip with probability 0.5.
        color_jitter: strength s of ColorJitter(brightness=s, contrast=s, saturation=s, hue=s/4),
            applied with probability 0.8 as in SimCLR/MoCo v2; 0 disables it.
        resized_crop: use RandomResizedCrop instead of scale + pad + crop.
        vflip: vertical flip with probability 0.5 (aerial tiles: the Vaihingen seed flips both ways).
        center_crop: the central crop (padded with ignore where the image is smaller), no scaling:
            ClusterNet's thesis trains on the unaugmented 713 px centre crop.
        resize: the whole image resized to ``crop_size``, no crop or scaling (the twin seed's
            ``A.Resize`` for VOC fine-tuning).
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        scale: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        color_jitter: float = 0.0,
        resized_crop: bool = False,
        vflip: bool = False,
        center_crop: bool = False,
        resize: bool = False,
    ) -> None:
        height, width = _pair(crop_size)
        low, high = float(scale[0]), float(scale[1])
        if not 0 < low <= high:
            raise ValueError(f"scale must satisfy 0 < low <= high, got {tuple(scale)}")
        if center_crop + resized_crop + resize > 1:
            raise ValueError("center_crop, resized_crop and resize exclude each other")
        steps: list[A.BasicTransform] = []
        if resize:
            steps.append(A.Resize(height=height, width=width))
        elif center_crop:
            steps += _padded_center_crop(height, width)
        elif resized_crop:
            steps.append(A.RandomResizedCrop(size=(height, width), scale=(low, min(high, 1.0))))
        else:
            steps += [
                # scale_limit is relative to 1 in albumentations.
                A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0),
                A.PadIfNeeded(
                    min_height=height,
                    min_width=width,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                    fill_mask=IGNORE_INDEX,
                ),
                A.RandomCrop(height=height, width=width),
            ]
        if hflip:
            steps.append(A.HorizontalFlip(p=0.5))
        if vflip:
            steps.append(A.VerticalFlip(p=0.5))
        if color_jitter > 0:
            s = float(color_jitter)
            steps.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(s / 4, 0.5), p=0.8))
        super().__init__(steps)


class EvalTransform(_AlbumentationsTransform):
    """Deterministic evaluation transform.

    Args:
        size: None keeps the native resolution (batch size 1 or equal-size images); an int or
            (height, width) resizes to exactly that size, or, with ``center_crop``, resizes the
            shorter side to ``size`` and takes the central ``size`` x ``size`` crop (the PiCIE/STEGO
            evaluation protocol).
        center_crop: see ``size``; needs an int size.
        crop: after any resize, the central crop of this size, padded with ignore where the image is
            smaller (ClusterNet's thesis scores the 713 px centre crop of each native-size frame).
    """

    def __init__(self, size: int | tuple[int, int] | None = None, center_crop: bool = False,
                 crop: int | tuple[int, int] | None = None) -> None:
        steps: list[A.BasicTransform] = []
        if size is not None:
            if center_crop:
                if not isinstance(size, int):
                    raise ValueError(f"center_crop needs an int size, got {size!r}")
                steps += [A.SmallestMaxSize(max_size=size), A.CenterCrop(height=size, width=size)]
            else:
                height, width = _pair(size)
                steps.append(A.Resize(height=height, width=width))
        elif center_crop:
            raise ValueError("center_crop=True needs a size")
        if crop is not None:
            steps += _padded_center_crop(*_pair(crop))
        self.identity = not steps
        super().__init__(steps)

    def __call__(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Deterministic steps only: no draw from torch's generator (evaluation never moves it).
        return dict(sample) if self.identity else self._apply(sample)
