"""Built-in synthetic dataset (``data=shapes``): textured shapes over textured "stuff", no files.

Every sample is rendered on the fly from ``numpy.random.default_rng([seed, split, index])``, so it is
deterministic per (seed, split, index) and costs well under 2 ms at 64x64.

Classes: three "stuff" backgrounds filling wavy horizontal bands (sky = smooth gradient, grass =
strong pixel noise, wall = bricks) and four object classes, each a distinct shape with its own
texture (circle = dots, square = diagonal stripes, triangle = checkerboard, cross = solid + mild
noise). Every colour is drawn independently of the class, so a class can only be told by shape and
texture: raw colour k-means does not solve it (see tests/test_data_shapes.py), which is the regime the
unsupervised methods of the suite are meant for. ``labels`` are the classes present (derived from the
mask after the transform).

No input is computed from the masks by default: a method that needs saliency gets it from an estimator
on the images (``data.prior=saliency_unsup``). ``saliency=oracle`` adds ``saliency`` = the ground-truth
object pixels: an ORACLE (label every number it gives "oracle saliency"), never a default.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from usgs.data.base import SegmentationDataModule, SegmentationDataset, Transform

CLASS_NAMES = ("sky", "grass", "wall", "circle", "square", "triangle", "cross")
NUM_STUFF = 3
PALETTE = np.array(
    [[135, 206, 235], [34, 139, 34], [178, 34, 34], [255, 215, 0], [0, 0, 255], [255, 0, 255], [0, 255, 255]],
    dtype=np.uint8,
)
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours; the second differs from the first by >= 70 in every channel (mod 256)."""
    first = rng.integers(0, 256, 3)
    second = (first + rng.integers(70, 187, 3)) % 256
    return first.astype(np.float32), second.astype(np.float32)


@lru_cache(maxsize=32)
def two_tone_pattern(cls: int, size: int) -> np.ndarray:
    """Boolean two-tone pattern [H,W,1] of a textured class; periods scale with the image (64 px reference)."""
    yy, xx = pixel_grid(size)
    s = size / 64.0
    if cls == 2:  # wall: bricks 8 x 16 px with 1 px mortar, alternate rows shifted by half a brick
        height, width = 8 * s, 16 * s
        shifted = xx + (np.floor(yy / height) % 2) * width / 2
        pattern = (yy % height < max(1.0, s)) | (shifted % width < max(1.0, s))
    elif cls == 3:  # circle: dots on a 6 px grid
        cell = 6 * s
        pattern = (yy % cell - cell / 2) ** 2 + (xx % cell - cell / 2) ** 2 <= (1.5 * s) ** 2
    elif cls == 4:  # square: diagonal stripes, 3 px wide
        pattern = ((xx + yy) // (3 * s)) % 2 == 1
    elif cls == 5:  # triangle: 4 px checkerboard
        pattern = (xx // (4 * s) + yy // (4 * s)) % 2 == 1
    else:
        raise ValueError(f"class {cls} has no two-tone pattern")
    return pattern[..., None]


def class_texture(cls: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Full-image float32 RGB texture [H,W,3] of class ``cls`` in random colours."""
    first, second = _colours(rng)
    if cls == 0:  # sky: smooth gradient in a random direction
        yy, xx = pixel_grid(size)
        angle = rng.uniform(0, 2 * np.pi)
        t = (((np.cos(angle) * xx + np.sin(angle) * yy) / size + 1.0) / 2.0)[..., None]
        return first * (1 - t) + second * t
    if cls in (1, 6):  # grass: strong luminance noise; cross: solid colour with mild noise
        sigma = 45.0 if cls == 1 else 12.0
        return first + sigma * rng.standard_normal((size, size, 1), dtype=np.float32)
    return np.where(two_tone_pattern(cls, size), second, first)


def shape_region(cls: int, rng: np.random.Generator, size: int,
                 radius_range: tuple[float, float] = (0.12, 0.28)) -> np.ndarray:
    """Boolean [H,W] region of one object of class ``cls`` at a random position, scale and rotation;
    its radius is drawn from ``radius_range`` (fractions of the image size)."""
    yy, xx = pixel_grid(size)
    radius = rng.uniform(*radius_range) * size
    cy, cx = rng.uniform(0.5 * radius, size - 0.5 * radius, 2)
    theta = rng.uniform(0, 2 * np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    if cls == 3:
        return u**2 + v**2 <= radius**2
    if cls == 4:
        return (np.abs(u) <= 0.8 * radius) & (np.abs(v) <= 0.8 * radius)
    if cls == 5:  # equilateral triangle, circumradius r: three half-planes at the inradius r/2
        inside = np.ones((size, size), dtype=bool)
        for angle in np.deg2rad([90.0, 210.0, 330.0]):
            inside &= u * np.cos(angle) + v * np.sin(angle) <= radius / 2
        return inside
    bar = radius / 3
    return ((np.abs(u) <= radius) & (np.abs(v) <= bar)) | ((np.abs(v) <= radius) & (np.abs(u) <= bar))


def wavy_bands(rng: np.random.Generator, size: int, num_bands: int) -> np.ndarray:
    """Band index int64 [S,S] of ``num_bands`` horizontal bands with wavy borders, top to bottom."""
    yy, xx = pixel_grid(size)
    band = np.zeros((size, size), dtype=np.int64)
    for j in range(1, num_bands):
        height = (j + rng.uniform(-0.25, 0.25)) * size / num_bands
        wave = rng.uniform(0.02, 0.08) * size * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * xx / size + rng.uniform(0, 7))
        band += yy > height + wave
    return band


def render(rng: np.random.Generator, size: int, max_objects: int = 3) -> dict[str, np.ndarray]:
    """One raw sample: ``image`` uint8 [S,S,3], ``mask`` uint8 [S,S]."""
    num_bands = int(rng.integers(2, NUM_STUFF + 1))
    stuff = rng.permutation(NUM_STUFF)[:num_bands]
    band = wavy_bands(rng, size, num_bands)
    mask = stuff[band].astype(np.uint8)
    image = np.zeros((size, size, 3), dtype=np.float32)
    for cls in stuff:
        region = mask == cls
        image[region] = class_texture(int(cls), rng, size)[region]
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(NUM_STUFF, len(CLASS_NAMES)))
        region = shape_region(cls, rng, size)
        image[region] = class_texture(cls, rng, size)[region]
        mask[region] = cls
    return {"image": np.clip(image, 0, 255).astype(np.uint8), "mask": mask}


SALIENCY_OPTIONS = (None, "oracle")


def check_saliency_option(saliency: str | None) -> bool:
    """True for ``saliency="oracle"`` (the ground-truth foreground as saliency), False for None."""
    if saliency not in SALIENCY_OPTIONS:
        raise ValueError(f"data.saliency={saliency!r}: expected null (no saliency; use data.prior=saliency_unsup) "
                         "or 'oracle' (the ground-truth foreground, an oracle)")
    return saliency == "oracle"


class ShapesDataset(SegmentationDataset):
    """Synthetic textured shapes (see module docstring); ``num_samples`` samples of ``split``.

    Subclasses (``usgs.data.objects``) change ``class_names``, :meth:`render` and :meth:`foreground`.
    ``oracle_saliency`` adds ``saliency`` = :meth:`foreground` of the mask (an oracle, see the module
    docstring).
    """

    class_names: tuple[str, ...] = CLASS_NAMES

    def __init__(
        self,
        split: str,
        num_samples: int,
        image_size: int = 64,
        seed: int = 0,
        max_objects: int = 3,
        transform: Transform | None = None,
        prior_dir: Path | None = None,
        oracle_saliency: bool = False,
    ) -> None:
        if split not in _SPLIT_CODE:
            raise ValueError(f"unknown split {split!r}; valid: {list(_SPLIT_CODE)}")
        if image_size < 16 or num_samples < 0 or max_objects < 1:
            raise ValueError(
                f"need image_size >= 16, num_samples >= 0, max_objects >= 1; got {image_size}, {num_samples}, {max_objects}"
            )
        super().__init__(len(self.class_names), transform, prior_dir)
        self.split, self.image_size, self.seed, self.max_objects = split, image_size, seed, max_objects
        self.ids = [f"{split}_{i:05d}" for i in range(num_samples)]
        self.oracle_saliency = oracle_saliency

    @staticmethod
    def foreground(mask: np.ndarray) -> np.ndarray:
        """Ground-truth object pixels (bool [H,W]): the four object classes."""
        return mask >= NUM_STUFF

    def render(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One raw sample drawn from ``rng``."""
        return render(rng, self.image_size, self.max_objects)

    def load(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for {len(self.ids)} {self.split} samples")
        raw = self.render(np.random.default_rng([self.seed, _SPLIT_CODE[self.split], index]))
        if self.oracle_saliency:
            raw["saliency"] = self.foreground(raw["mask"]).astype(np.uint8)
        return raw


class ShapesDataModule(SegmentationDataModule):
    """DataModule of the synthetic shapes (the default ``data=shapes``).

    ``data_seed`` fixes the generated images (the data's identity, kept constant across training
    seeds); the base ``seed`` only drives the training shuffle. ``saliency``: None (default, no
    saliency key) or "oracle" (the ground-truth foreground, see the module docstring).
    """

    name = "shapes"
    class_names = CLASS_NAMES
    palette = PALETTE
    dataset_class: type[ShapesDataset] = ShapesDataset

    def __init__(
        self,
        *,
        image_size: int = 64,
        num_train: int = 256,
        num_val: int = 64,
        num_test: int = 64,
        data_seed: int = 0,
        max_objects: int = 3,
        saliency: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_size, self.data_seed, self.max_objects = image_size, data_seed, max_objects
        self.oracle_saliency = check_saliency_option(saliency)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}

    def build_dataset(self, split: str, transform: Transform | None, prior_dir: Path | None) -> ShapesDataset:
        return self.dataset_class(split, self.sizes[split], self.image_size, self.data_seed, self.max_objects,
                                  transform, prior_dir, self.oracle_saliency)
