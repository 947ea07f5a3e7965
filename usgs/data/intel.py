"""Intel Image Classification (the seed dataset of the k-means-prior twin work), class-folder layout.

``seg_train/seg_train/<class>/<n>.jpg`` and ``seg_test/seg_test/<class>/<n>.jpg``, 150x150 scenes of 6
classes. Splits: test = seg_test; val is carved out of seg_train (``val_fraction``, ``split_seed``),
train is the rest of seg_train. There are no pixel labels: every sample has its one-hot image label in ``labels``; when a
prior is selected (``data.prior=...``), the cached prior mask is also the segmentation target
``mask`` (the seed trains and scores the twins against the k-means prior), so ``prior_splits``
defaults to all splits here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from usgs.data.base import SegmentationDataModule, SegmentationDataset, Transform
from usgs.data.io import read_rgb
from usgs.data.splits import holdout_split, split_sources

CLASS_NAMES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
PALETTE = np.array(
    [[128, 128, 128], [34, 139, 34], [200, 230, 255], [139, 90, 43], [0, 105, 148], [64, 64, 64]],
    dtype=np.uint8,
)
LAYOUT = (
    "<root>/seg_train/seg_train/<class>/<n>.jpg and <root>/seg_test/seg_test/<class>/<n>.jpg, classes "
    + ", ".join(CLASS_NAMES)
)
SPLIT_DIRS = {"train": "seg_train/seg_train", "test": "seg_test/seg_test"}  # val: carved out of train


class IntelDataset(SegmentationDataset):
    """Images of one split; ids are ``<class>/<stem>``; the prior (if any) doubles as ``mask``."""

    def __init__(
        self, ids: list[str], folder: Path, transform: Transform | None = None, prior_dir: Path | None = None
    ) -> None:
        super().__init__(len(CLASS_NAMES), transform, prior_dir)
        self.ids, self.folder = ids, folder

    def describe(self, index: int) -> str:
        return f"Intel image {self.folder / self.ids[index]}.jpg"

    def files(self, index: int) -> list[Path]:
        return [self.folder / f"{self.ids[index]}.jpg"]

    def load(self, index: int) -> dict[str, np.ndarray]:
        name = self.ids[index]
        labels = np.zeros(len(CLASS_NAMES), np.float32)
        labels[CLASS_NAMES.index(name.split("/")[0])] = 1.0
        return {"image": read_rgb(self.folder / f"{name}.jpg"), "labels": labels}

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        if "prior" in sample:
            sample["mask"] = sample["prior"].clone()
        return sample


class IntelDataModule(SegmentationDataModule):
    """Intel Image Classification; test = seg_test, val carved out of seg_train (``split_dirs``)."""

    name = "intel"
    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(
        self,
        *,
        split_dirs: dict[str, str] | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        prior_splits: tuple[str, ...] = ("train", "val", "test"),
        **kwargs: Any,
    ) -> None:
        super().__init__(prior_splits=prior_splits, **kwargs)
        self.sources = split_sources(split_dirs or SPLIT_DIRS, f"data {self.name!r}")
        self.val_fraction, self.split_seed = val_fraction, split_seed

    def build_dataset(self, split: str, transform: Transform | None, prior_dir: Path | None) -> IntelDataset:
        source, carved = self.sources[split]
        folder = self.require_root(LAYOUT) / source
        if not folder.is_dir():
            raise FileNotFoundError(f"Intel split folder missing: {folder}; expected {LAYOUT}")
        unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in CLASS_NAMES)
        if unknown:
            raise ValueError(f"unknown class folder(s) {unknown} in {folder}; valid: {list(CLASS_NAMES)}")
        ids = sorted(f"{p.parent.name}/{p.stem}" for c in CLASS_NAMES for p in (folder / c).glob("*.jpg"))
        if not ids:
            raise FileNotFoundError(f"no images under {folder}; expected {LAYOUT}")
        if carved:
            ids = holdout_split(ids, split, self.val_fraction, self.split_seed)
        return IntelDataset(ids, folder, transform, prior_dir)

    def split_ids(self, split: str) -> list[str]:
        """Ids prefixed with their split folder (seg_train and seg_test reuse file names)."""
        return [f"{self.sources[split][0]}/{i}" for i in self.build_dataset(split, None, None).ids]
