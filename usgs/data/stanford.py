"""Stanford Background (Gould et al., ICCV 2009): 715 outdoor scenes of ~320x240, 8 classes.

Layout ``<root>/images/<id>.jpg`` + ``<root>/labels/<id>.regions.txt`` (whitespace-separated ints,
one row per image row; -1 = unknown -> 255). There is no official split: a seeded permutation puts
``test_fraction`` of the images in test and ``val_fraction`` in val, the rest in train
(``usgs.data.splits.holdout_split``). Image-level labels are the classes present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from usgs.data.base import SegmentationDataModule, SegmentationDataset, Transform
from usgs.data.io import IGNORE_INDEX, check_same_size, read_rgb
from usgs.data.splits import holdout_split

CLASS_NAMES = ("sky", "tree", "road", "grass", "water", "building", "mountain", "foreground object")
PALETTE = np.array(
    [[70, 130, 180], [34, 139, 34], [128, 64, 128], [152, 251, 152], [0, 105, 148], [70, 70, 70], [139, 90, 43],
     [220, 20, 60]],
    dtype=np.uint8,
)  # fmt: skip
LAYOUT = "<root>/images/<id>.jpg and <root>/labels/<id>.regions.txt (iccv09Data)"


def read_regions(path: Path) -> np.ndarray:
    """A ``.regions.txt`` matrix as uint8 [H,W] class ids, -1 (unknown) -> 255."""
    if not path.is_file():
        raise FileNotFoundError(f"label file missing: {path}; expected {LAYOUT}")
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.strip()]
    values = np.fromstring(text, dtype=np.int64, sep=" ")  # ~10x faster than int(...) per token
    if not rows or values.size % len(rows):
        raise ValueError(f"{path}: rows of unequal length ({values.size} values in {len(rows)} rows)")
    labels = values.reshape(len(rows), -1)
    bad = np.unique(labels[(labels < -1) | (labels >= len(CLASS_NAMES))])
    if bad.size:
        raise ValueError(
            f"{path}: label value(s) {bad.tolist()} out of range; expected -1..{len(CLASS_NAMES) - 1}"
        )
    return np.where(labels < 0, IGNORE_INDEX, labels).astype(np.uint8)


class StanfordDataset(SegmentationDataset):
    """Images ``ids`` of Stanford Background."""

    def __init__(
        self, ids: list[str], root: Path, transform: Transform | None = None, prior_dir: Path | None = None
    ) -> None:
        super().__init__(len(CLASS_NAMES), transform, prior_dir)
        self.ids, self.root = ids, root

    def describe(self, index: int) -> str:
        return f"Stanford image {self.ids[index]!r} ({', '.join(map(str, self.files(index)))})"

    def files(self, index: int) -> list[Path]:
        name = self.ids[index]
        return [self.root / "images" / f"{name}.jpg", self.root / "labels" / f"{name}.regions.txt"]

    def load(self, index: int) -> dict[str, np.ndarray]:
        image_path, label_path = self.files(index)
        image, mask = read_rgb(image_path), read_regions(label_path)
        check_same_size(image, mask, image_path, label_path)
        return {"image": image, "mask": mask}


class StanfordDataModule(SegmentationDataModule):
    """Stanford Background with a seeded three-way split (``val_fraction``, ``test_fraction``, ``split_seed``)."""

    name = "stanford"
    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(
        self, *, val_fraction: float = 0.2, test_fraction: float = 0.2, split_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed

    def split_ids(self, split: str) -> list[str]:
        root = self.require_root(LAYOUT)
        ids = sorted(p.stem for p in (root / "images").glob("*.jpg"))
        if not ids:
            raise FileNotFoundError(f"no images in {root / 'images'}; expected {LAYOUT}")
        return holdout_split(ids, split, self.val_fraction, self.split_seed, self.test_fraction)

    def build_dataset(
        self, split: str, transform: Transform | None, prior_dir: Path | None
    ) -> StanfordDataset:
        return StanfordDataset(self.split_ids(split), self.require_root(LAYOUT), transform, prior_dir)
