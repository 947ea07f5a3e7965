"""COCO-Stuff 164k in the 27-class protocol of IIC/PiCIE/STEGO (Caesar et al., CVPR 2018).

Labels are the ``stuffthingmaps_trainval2017`` PNGs: 182 fine ids (0..181; 0..90 things, 91..181
stuff), 255 = unlabeled. They are merged into the 27 COCO-Stuff supercategories (12 thing, 15 stuff)
with the fine-to-coarse table of STEGO's ``src/data.py`` (``Coco.fine_to_coarse``); 255 stays ignored.
The images are the "curated" subsets of IIC (Ji et al., ICCV 2019), as STEGO reads them:
train = ``curated/train2017/Coco164kFull_Stuff_Coarse.txt``, and the reported split is
``curated/val2017/Coco164kFull_Stuff_Coarse_7.txt``. Here that official val list is ``test``
(reported once) and ``val`` is carved from the curated train list, seeded (``val_fraction``).

Nothing is downloaded at run time: see :data:`LAYOUT` for the files to fetch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from usgs.data.base import SegmentationDataModule, SegmentationDataset, Transform
from usgs.data.io import IGNORE_INDEX, check_same_size, read_index_png, read_list, read_rgb
from usgs.data.splits import holdout_split

CLASS_NAMES = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal", "outdoor",
    "person", "sports", "vehicle",  # 0..11: thing supercategories
    "ceiling", "floor", "food-stuff", "furniture-stuff", "raw-material", "textile", "wall", "window",
    "building", "ground", "plant", "sky", "solid", "structural", "water",  # 12..26: stuff
)  # fmt: skip
# Thing fine ids [start, stop) -> coarse id (COCO's thing ids in their supercategory blocks).
_THING_RANGES = ((0, 1, 9), (1, 9, 11), (9, 15, 8), (15, 25, 7), (25, 33, 6), (33, 43, 10), (43, 51, 5),
                 (51, 61, 2), (61, 71, 3), (71, 77, 0), (77, 83, 1), (83, 91, 4))
# Stuff fine ids 91..181 (banner, blanket, branch, ... window-other, wood) -> coarse id.
_STUFF = (17, 17, 22, 20, 20, 22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13,
          13, 13, 22, 26, 14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21, 17,
          22, 16, 21, 21, 25, 21, 26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24, 15, 24, 22, 25, 15, 20,
          17, 17, 22, 14, 18, 18, 18, 18, 18, 18, 18, 26, 26, 19, 19, 24)  # fmt: skip
FINE_TO_COARSE = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _start, _stop, _coarse in _THING_RANGES:
    FINE_TO_COARSE[_start:_stop] = _coarse
FINE_TO_COARSE[91:182] = _STUFF
PALETTE = np.random.default_rng(27).integers(0, 256, (len(CLASS_NAMES), 3), dtype=np.uint8)  # no official colours

TRAIN_LIST = "curated/train2017/Coco164kFull_Stuff_Coarse.txt"
TEST_LIST = "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt"
LAYOUT = (
    "<root>/images/{train2017,val2017}/<id>.jpg (COCO 2017 train/val images), "
    "<root>/annotations/{train2017,val2017}/<id>.png (stuffthingmaps_trainval2017.zip of "
    "github.com/nightrome/cocostuff) and the IIC curated lists <root>/" + TRAIN_LIST + " and <root>/" + TEST_LIST
    + " (STEGO's README links an archive with all of them)"
)


def prepare(root: str | Path) -> Path:
    """Check the COCO-Stuff-27 files under ``root``; offline, the error lists what to fetch and where."""
    root = Path(root)
    needed = [TRAIN_LIST, TEST_LIST, "images/train2017", "images/val2017", "annotations/train2017",
              "annotations/val2017"]
    missing = [rel for rel in needed if not (root / rel).exists()]
    if missing:
        raise FileNotFoundError(f"COCO-Stuff-27 at {root} lacks {missing}; expected {LAYOUT}")
    return root


class CocoStuffDataset(SegmentationDataset):
    """Curated COCO-Stuff images of one split; ids are ``<split_dir>/<image id>``."""

    def __init__(self, ids: list[str], root: Path, num_classes: int, transform: Transform | None = None,
                 prior_dir: Path | None = None) -> None:
        super().__init__(num_classes, transform, prior_dir)
        self.ids, self.root = ids, root

    def paths(self, index: int) -> tuple[Path, Path]:
        folder, name = self.ids[index].split("/")
        return self.root / "images" / folder / f"{name}.jpg", self.root / "annotations" / folder / f"{name}.png"

    def describe(self, index: int) -> str:
        return f"COCO-Stuff image {self.ids[index]!r} ({self.paths(index)[0]})"

    def load(self, index: int) -> dict[str, np.ndarray]:
        image_path, label_path = self.paths(index)
        image, fine = read_rgb(image_path), read_index_png(label_path)
        check_same_size(image, fine, image_path, label_path)
        return {"image": image, "mask": FINE_TO_COARSE[fine]}


class CocoStuff27DataModule(SegmentationDataModule):
    """COCO-Stuff-27: train/val from the curated train list (seeded ``val_fraction``), test = curated val."""

    name = "cocostuff27"
    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, *, val_fraction: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_fraction = val_fraction

    def split_ids(self, split: str) -> list[str]:
        root = prepare(self.require_root(LAYOUT))
        if split == "test":
            return [f"val2017/{i}" for i in read_list(root / TEST_LIST, "COCO-Stuff test")]
        ids = [f"train2017/{i}" for i in read_list(root / TRAIN_LIST, "COCO-Stuff train")]
        return holdout_split(ids, split, self.val_fraction, seed=0)  # fixed: the same val for every run

    def build_dataset(self, split: str, transform: Transform | None, prior_dir: Path | None) -> CocoStuffDataset:
        return CocoStuffDataset(self.split_ids(split), self.require_root(LAYOUT), self.num_classes, transform,
                                prior_dir)
