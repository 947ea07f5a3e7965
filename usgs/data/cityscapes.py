"""Cityscapes (Cordts et al., 2016) on its original ``leftImg8bit/`` + ``gtFine/`` layout.

``*_gtFine_labelIds.png`` holds the 34 raw label ids (0..33; the licence plate, id -1, is stored as
255). ``label_mode="trainid"`` maps them to the 19 evaluation classes of the benchmark (others ->
255), the table of cityscapesScripts' ``labels.py``; ``label_mode="raw"`` keeps the 34 raw ids, the
setting of the ClusterNet thesis (use ``data.num_classes=34``); ``label_mode="id27"`` keeps raw ids
7..33 as classes 0..26 (others -> 255), the 27-class protocol of PiCIE/STEGO (``data=cityscapes27``).

Cityscapes needs a (free) login at https://www.cityscapes-dataset.com, so nothing is downloaded:
get ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` there and unzip both into the
root. The public test labels are dummies, so the official ``val`` (500 frames) is the test split
and val is carved out of ``train`` (``val_fraction``, ``split_seed``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from usgs.data.base import SegmentationDataModule, SegmentationDataset, Transform
from usgs.data.io import IGNORE_INDEX, check_same_size, read_index_png, read_rgb
from usgs.data.splits import holdout_split, split_sources

# (raw id, name, train id) from cityscapesScripts/helpers/labels.py; 255 = not evaluated.
LABELS = (
    (0, "unlabeled", 255), (1, "ego vehicle", 255), (2, "rectification border", 255), (3, "out of roi", 255),
    (4, "static", 255), (5, "dynamic", 255), (6, "ground", 255), (7, "road", 0), (8, "sidewalk", 1),
    (9, "parking", 255), (10, "rail track", 255), (11, "building", 2), (12, "wall", 3), (13, "fence", 4),
    (14, "guard rail", 255), (15, "bridge", 255), (16, "tunnel", 255), (17, "pole", 5), (18, "polegroup", 255),
    (19, "traffic light", 6), (20, "traffic sign", 7), (21, "vegetation", 8), (22, "terrain", 9), (23, "sky", 10),
    (24, "person", 11), (25, "rider", 12), (26, "car", 13), (27, "truck", 14), (28, "bus", 15),
    (29, "caravan", 255), (30, "trailer", 255), (31, "train", 16), (32, "motorcycle", 17), (33, "bicycle", 18),
)  # fmt: skip
TRAIN_CLASS_NAMES = tuple(name for _, name, train_id in LABELS if train_id != IGNORE_INDEX)
RAW_CLASS_NAMES = tuple(name for _, name, _ in LABELS)
TRAIN_ID_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _raw, _name, _train in LABELS:
    TRAIN_ID_LUT[_raw] = _train
RAW_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
RAW_LUT[: len(LABELS)] = np.arange(len(LABELS))
ID27_CLASS_NAMES = RAW_CLASS_NAMES[7:]  # STEGO's CityscapesSeg: label id - 7, negatives ignored
ID27_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
ID27_LUT[7 : len(LABELS)] = np.arange(len(ID27_CLASS_NAMES))
TRAIN_PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
     [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
     [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32]],
    dtype=np.uint8,
)  # fmt: skip
LAYOUT = (
    "<root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and "
    "<root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png (unzip leftImg8bit_trainvaltest.zip and "
    "gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com after logging in)"
)


def labelids_to_trainids(label_ids: np.ndarray) -> np.ndarray:
    """Raw label ids (uint8 [H,W]) -> the 19 train ids, 255 elsewhere."""
    return TRAIN_ID_LUT[label_ids]


class CityscapesDataset(SegmentationDataset):
    """Frames of one split; ids are ``<city>/<city>_<seq>_<frame>``."""

    def __init__(
        self,
        ids: list[str],
        image_dir: Path,
        label_dir: Path,
        lut: np.ndarray,
        num_classes: int,
        transform: Transform | None = None,
        prior_dir: Path | None = None,
    ) -> None:
        super().__init__(num_classes, transform, prior_dir)
        self.ids, self.image_dir, self.label_dir, self.lut = ids, image_dir, label_dir, lut

    def paths(self, index: int) -> tuple[Path, Path]:
        name = self.ids[index]
        return self.image_dir / f"{name}_leftImg8bit.png", self.label_dir / f"{name}_gtFine_labelIds.png"

    def describe(self, index: int) -> str:
        return f"Cityscapes frame {self.ids[index]!r} ({', '.join(map(str, self.paths(index)))})"

    def files(self, index: int) -> list[Path]:
        return list(self.paths(index))

    def load(self, index: int) -> dict[str, np.ndarray]:
        image_path, label_path = self.paths(index)
        image, label_ids = read_rgb(image_path), read_index_png(label_path)
        check_same_size(image, label_ids, image_path, label_path)
        return {"image": image, "mask": self.lut[label_ids]}


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes fine annotations; ``label_mode``: "trainid" (19), "raw" (34 ids) or "id27" (27).

    ``split_dirs`` maps train/test (and optionally val) to the on-disk split folders; by default
    test reads the official val and val is carved out of train (``val_fraction``, ``split_seed``).
    """

    name = "cityscapes"
    palette = TRAIN_PALETTE

    def __init__(
        self,
        *,
        label_mode: str = "trainid",
        split_dirs: dict[str, str] | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        modes = {"trainid": (TRAIN_CLASS_NAMES, TRAIN_ID_LUT), "raw": (RAW_CLASS_NAMES, RAW_LUT),
                 "id27": (ID27_CLASS_NAMES, ID27_LUT)}
        if label_mode not in modes:
            raise ValueError(f"label_mode={label_mode!r}; valid: {list(modes)}")
        self.class_names, self.lut = modes[label_mode]
        if label_mode != "trainid":
            rng = np.random.default_rng(0)  # raw ids have no official colours; fixed random ones
            self.palette = rng.integers(0, 256, (len(RAW_CLASS_NAMES), 3), dtype=np.uint8)[-len(self.class_names):]
        super().__init__(**kwargs)
        self.label_mode = label_mode
        self.sources = split_sources(split_dirs or {"train": "train", "test": "val"}, f"data {self.name!r}")
        self.val_fraction, self.split_seed = val_fraction, split_seed

    def split_ids(self, split: str) -> list[str]:
        root = self.require_root(LAYOUT)
        source, carved = self.sources[split]
        image_dir = root / "leftImg8bit" / source
        suffix = "_leftImg8bit.png"
        ids = sorted(f"{p.parent.name}/{p.name[: -len(suffix)]}" for p in image_dir.glob(f"*/*{suffix}"))
        if not ids:
            raise FileNotFoundError(f"no Cityscapes images under {image_dir}; expected {LAYOUT}")
        if carved:
            ids = holdout_split(ids, split, self.val_fraction, self.split_seed)
        return [f"{source}/{i}" for i in ids]

    def build_dataset(
        self, split: str, transform: Transform | None, prior_dir: Path | None
    ) -> CityscapesDataset:
        root = self.require_root(LAYOUT)
        folder = self.sources[split][0]
        return CityscapesDataset(
            [i.split("/", 1)[1] for i in self.split_ids(split)],
            root / "leftImg8bit" / folder,
            root / "gtFine" / folder,
            self.lut,
            self.num_classes,
            transform,
            prior_dir,
        )
