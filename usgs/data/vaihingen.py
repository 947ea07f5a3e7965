"""ISPRS Vaihingen 2D semantic labelling (Rottensteiner et al., 2012) on its original tif layout.

``top/top_mosaic_09cm_area<N>.tif`` are IRRG orthophotos (~2000x2500); the ground truth is
colour-coded (full ``gts_for_participants/top_mosaic_09cm_area<N>.tif`` or eroded
``gts_eroded/top_mosaic_09cm_area<N>_noBoundary.tif``, black = eroded boundary -> ignore). Clutter
(red) is ignored by default as in the seed work, leaving 5 classes.

Split of the 33 labelled tiles as in the seed work (seed 341): N1 = 3 pixel-labelled tiles, N2 = 23
tiles with crop-level class-presence labels only, 7 tiles the seed tests on (its ``test_ids``), drawn
with ``random.Random(341).sample`` over the sorted area numbers (the seed's own listing order is not
recorded, so the concrete tiles are a reconstruction). Those 7 are our test tiles; the seed has no
val split, so ``n_val`` (3) val tiles are drawn out of the N2 pool by the same generator, leaving
20 N2 tiles. Explicit tile lists override it.

Training serves random ``crop_size`` crops (``crops_per_tile`` per tile and epoch, positions from
torch's RNG, so reproducible under a seeded loader); N2 crops have an all-ignore mask and
``labels`` = classes present in the crop. Validation/test cut each tile into a grid of
``tile_size`` windows with stride ``tile_size`` (padded with ignore at the borders), so every pixel
is scored exactly once; ``sliding_window`` tells methods the window and stride.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from usgs.data.base import SegmentationDataModule, SegmentationDataset, Transform
from usgs.data.io import IGNORE_INDEX, check_same_size, decode_colours

AREAS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 20, 21, 22, 23, 24, 26, 27, 28, 29, 30,
         31, 32, 33, 34, 35, 37, 38)  # fmt: skip
COLOURS = np.array(
    [[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0], [0, 0, 0]],
    dtype=np.uint8,
)
ALL_CLASS_NAMES = ("impervious surfaces", "building", "low vegetation", "tree", "car", "clutter")
GT_DIRS = {
    "eroded": ("gts_eroded", "top_mosaic_09cm_area{}_noBoundary.tif"),
    "full": ("gts_for_participants", "top_mosaic_09cm_area{}.tif"),
}
LAYOUT = "<root>/top/top_mosaic_09cm_area<N>.tif and <root>/gts_eroded/top_mosaic_09cm_area<N>_noBoundary.tif"


def seed_split(
    seed: int = 341, n1: int = 3, n2: int = 23, n_val: int = 3, areas: tuple[int, ...] = AREAS
) -> dict[str, list[int]]:
    """N1 / N2 / val / test tiles: the seed work's split, then ``n_val`` val tiles out of its N2."""
    if n1 + n2 >= len(areas) or not 0 < n_val < n2:
        raise ValueError(
            f"n1 + n2 = {n1 + n2} must leave a test tile out of {len(areas)} and 0 < n_val={n_val} < n2={n2}"
        )
    rng = random.Random(seed)
    n1_tiles = rng.sample(sorted(areas), n1)
    rest = [a for a in sorted(areas) if a not in n1_tiles]
    n2_tiles = rng.sample(rest, n2)
    test = [a for a in rest if a not in n2_tiles]  # the seed's test_ids
    val = rng.sample(n2_tiles, n_val)  # drawn after the seed's draws: N1, N2 and test stay the seed's
    return {"n1": n1_tiles, "n2": [a for a in n2_tiles if a not in val], "val": sorted(val), "test": test}


class VaihingenDataset(SegmentationDataset):
    """Crops of whole tiles: ``windows`` = (area, top, left) or None (random crop) per sample."""

    def __init__(
        self,
        tiles: list[tuple[int, bool]],
        windows: list[tuple[int, int | None, int | None]],
        crop_size: int,
        image_dir: Path,
        gt_dir: Path,
        gt_pattern: str,
        ignore_clutter: bool = True,
        transform: Transform | None = None,
        prior_dir: Path | None = None,
    ) -> None:
        super().__init__(5 if ignore_clutter else 6, transform, prior_dir)
        self.pixel_labels = dict(tiles)  # area -> pixel labels (N1/val) or crop labels only (N2)
        self.windows, self.crop_size = windows, crop_size
        self.image_dir, self.gt_dir, self.gt_pattern = image_dir, gt_dir, gt_pattern
        ids = []
        for k, (area, top, left) in enumerate(windows):
            ids.append(f"area{area}_{top}_{left}" if top is not None else f"area{area}_random{k}")
        self.ids = ids
        self.class_ids = np.array(
            [0, 1, 2, 3, 4, IGNORE_INDEX if ignore_clutter else 5, IGNORE_INDEX], np.uint8
        )
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def paths(self, area: int) -> tuple[Path, Path]:
        return self.image_dir / f"top_mosaic_09cm_area{area}.tif", self.gt_dir / self.gt_pattern.format(area)

    def describe(self, index: int) -> str:
        return f"Vaihingen crop {self.ids[index]!r} ({', '.join(map(str, self.files(index)))})"

    def files(self, index: int) -> list[Path]:
        return list(self.paths(self.windows[index][0]))

    def tile(self, area: int) -> tuple[np.ndarray, np.ndarray]:
        """Whole tile: IRRG uint8 [H,W,3] and decoded ids uint8 [H,W], cached (tiles are reused by many crops)."""
        if area not in self._cache:
            image_path, gt_path = self.paths(area)
            for path in (image_path, gt_path):
                if not path.is_file():
                    raise FileNotFoundError(
                        f"Vaihingen tile area{area} missing: {path}; expected {LAYOUT}. "
                        f"Use data.train_tiles / weak_tiles / val_tiles / test_tiles to list the tiles you have"
                    )
            image, colour = tifffile.imread(image_path), tifffile.imread(gt_path)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"{image_path}: expected uint8 IRRG [H,W,3], got {image.dtype} {image.shape}"
                )
            check_same_size(image, colour, image_path, gt_path)
            self._cache[area] = (image, decode_colours(colour[..., :3], COLOURS, self.class_ids, gt_path))
        return self._cache[area]

    def load(self, index: int) -> dict[str, np.ndarray]:
        area, top, left = self.windows[index]
        image, mask = self.tile(area)
        height, width = mask.shape
        size = self.crop_size
        if top is None or left is None:
            top = int(torch.randint(0, max(height - size, 0) + 1, (1,)))
            left = int(torch.randint(0, max(width - size, 0) + 1, (1,)))
        crop = np.full((size, size), IGNORE_INDEX, np.uint8)
        picture = np.zeros((size, size, 3), np.uint8)
        h, w = min(size, height - top), min(size, width - left)
        crop[:h, :w] = mask[top : top + h, left : left + w]
        picture[:h, :w] = image[top : top + h, left : left + w]
        if self.pixel_labels[area]:
            return {"image": picture, "mask": crop}
        labels = np.zeros(self.num_classes, np.float32)
        present = np.unique(crop)
        labels[present[present != IGNORE_INDEX]] = 1.0
        return {"image": picture, "mask": np.full_like(crop, IGNORE_INDEX), "labels": labels}


class VaihingenDataModule(SegmentationDataModule):
    """ISPRS Vaihingen with the seed's N1 / N2 / test split and val tiles out of N2 (see module docstring).

    Args (besides the base ones): ``gt`` ("eroded" | "full", scored on val/test), ``train_gt`` (the
    training split's ground truth, ``None`` = ``gt``; the seed trained on the full one),
    ``ignore_clutter``, ``train_set`` ("n1" | "n2" | "n1+n2"), ``split_seed`` / ``n1`` / ``n2`` /
    ``n_val``, explicit ``train_tiles`` (N1), ``weak_tiles`` (N2), ``val_tiles``, ``test_tiles`` (area
    numbers; override the seeded split), ``crop_size`` and
    ``crops_per_tile`` for training (or ``crops_per_epoch`` crops in all, tiles taken in turn: the
    seed's loader serves 10,000 crops an epoch, each from a random tile), ``tile_size`` for the
    evaluation grid.
    """

    name = "vaihingen"

    def __init__(
        self,
        *,
        gt: str = "eroded",
        train_gt: str | None = None,
        ignore_clutter: bool = True,
        train_set: str = "n1",
        split_seed: int = 341,
        n1: int = 3,
        n2: int = 23,
        n_val: int = 3,
        train_tiles: list[int] | None = None,
        weak_tiles: list[int] | None = None,
        val_tiles: list[int] | None = None,
        test_tiles: list[int] | None = None,
        crop_size: int = 256,
        crops_per_tile: int = 100,
        crops_per_epoch: int | None = None,
        tile_size: int = 512,
        **kwargs: Any,
    ) -> None:
        for key, value in (("gt", gt), ("train_gt", train_gt or gt)):
            if value not in GT_DIRS:
                raise ValueError(f"{key}={value!r}; valid: {list(GT_DIRS)}")
        if train_set not in ("n1", "n2", "n1+n2"):
            raise ValueError(f"train_set={train_set!r}; valid: ['n1', 'n2', 'n1+n2']")
        self.class_names = ALL_CLASS_NAMES[:5] if ignore_clutter else ALL_CLASS_NAMES
        self.palette = COLOURS[: len(self.class_names)]  # the ISPRS GT colours
        super().__init__(**kwargs)
        split = seed_split(split_seed, n1, n2, n_val)
        given = {"n1": train_tiles, "n2": weak_tiles, "val": val_tiles, "test": test_tiles}
        self.tiles = {key: list(tiles if tiles is not None else split[key]) for key, tiles in given.items()}
        self.gt, self.train_gt, self.ignore_clutter, self.train_set = gt, train_gt or gt, ignore_clutter, train_set
        self.crop_size, self.crops_per_tile, self.tile_size = crop_size, crops_per_tile, tile_size
        if crops_per_epoch is not None and crops_per_epoch < 1:
            raise ValueError(f"crops_per_epoch={crops_per_epoch}; expected a positive count or null")
        self.crops_per_epoch = crops_per_epoch

    @property
    def sliding_window(self) -> dict[str, int]:
        """Evaluation window and stride (pixels) in which val/test tiles are served."""
        return {"window": self.tile_size, "stride": self.tile_size}

    def split_ids(self, split: str) -> list[str]:
        """The tiles (``area<N>``) of ``split``; train: every N1 and N2 tile, whatever ``train_set``."""
        areas = self.tiles["n1"] + self.tiles["n2"] if split == "train" else self.tiles[split]
        return [f"area{a}" for a in areas]

    def _grid(self, areas: list[int], image_dir: Path) -> list[tuple[int, int | None, int | None]]:
        windows: list[tuple[int, int | None, int | None]] = []
        for area in areas:
            path = image_dir / f"top_mosaic_09cm_area{area}.tif"
            if not path.is_file():
                raise FileNotFoundError(
                    f"Vaihingen tile missing: {path}; expected {LAYOUT}; set data.val_tiles / data.test_tiles"
                )
            height, width = tifffile.TiffFile(path).pages[0].shape[:2]
            step = self.tile_size
            windows += [(area, t, l) for t in range(0, height, step) for l in range(0, width, step)]  # noqa: E741
        return windows

    def build_dataset(
        self, split: str, transform: Transform | None, prior_dir: Path | None
    ) -> VaihingenDataset:
        root = self.require_root(LAYOUT)
        gt_folder, pattern = GT_DIRS[self.train_gt if split == "train" else self.gt]
        if split == "train":
            tiles = [(a, True) for a in self.tiles["n1"]] if "n1" in self.train_set else []
            tiles += [(a, False) for a in self.tiles["n2"]] if "n2" in self.train_set else []
            windows: list[tuple[int, int | None, int | None]] = [
                (area, None, None) for area, _ in tiles for _ in range(self.crops_per_tile)
            ]
            if self.crops_per_epoch is not None and tiles:
                windows = [(tiles[i % len(tiles)][0], None, None) for i in range(self.crops_per_epoch)]
            size = self.crop_size
        else:
            tiles = [(a, True) for a in self.tiles[split]]
            windows, size = self._grid(self.tiles[split], root / "top"), self.tile_size
        if not tiles:
            raise ValueError(
                f"Vaihingen {split}: no tiles selected (train_set={self.train_set!r}, tiles={self.tiles})"
            )
        return VaihingenDataset(
            tiles,
            windows,
            size,
            root / "top",
            root / gt_folder,
            pattern,
            self.ignore_clutter,
            transform,
            prior_dir,
        )
