"""ISPRS Potsdam (Rottensteiner et al., 2012): the 6 classes and the 3-class merge of IIC/STEGO.

Two on-disk layouts:

* ``mmseg``: tiles converted by mmsegmentation's ``tools/dataset_converters/potsdam.py`` --
  ``img_dir/<split>/<id>.png`` (RGB) and ``ann_dir/<split>/<id>.png`` with 0 = eroded boundary
  (ignored) and 1..6 = the classes (mmseg's ``reduce_zero_label``).
* ``iic``: the tiles of IIC (Ji et al., ICCV 2019) that STEGO reads -- ``imgs/<id>.mat`` (``img``,
  RGB + IR; IR is dropped as STEGO does), ``gt/<id>.mat`` (``gt``, 0..5, 255 = ignore) and the lists
  ``labelled_train.txt`` / ``labelled_test.txt``.

Classes: impervious surfaces, building, low vegetation, tree, car, clutter. ``potsdam3`` merges them
as STEGO's ``Potsdam.fine_to_coarse``: {impervious, car} -> 0, {building, clutter} -> 1, {low
vegetation, tree} -> 2. Splits: ``test`` is the official test list (``labelled_test.txt``, or mmseg's
``val`` folder); ``val`` is carved from the training tiles, seeded (``val_fraction``).
Potsdam is distributed by ISPRS on request (https://www.isprs.org/education/benchmarks/UrbanSemLab);
nothing is downloaded at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from usgs.data.base import SegmentationDataModule, SegmentationDataset, Transform
from usgs.data.io import IGNORE_INDEX, check_same_size, read_index_png, read_list, read_rgb
from usgs.data.splits import holdout_split

CLASS_NAMES = ("impervious surfaces", "building", "low vegetation", "tree", "car", "clutter")
CLASS_NAMES_3 = ("roads and cars", "buildings and clutter", "vegetation and trees")
PALETTE = np.array([[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]],
                   dtype=np.uint8)  # the ISPRS colour code
PALETTE_3 = np.array([[255, 255, 255], [0, 0, 255], [0, 255, 0]], dtype=np.uint8)
MERGE_3 = np.full(256, IGNORE_INDEX, dtype=np.uint8)
MERGE_3[:6] = (0, 1, 2, 2, 0, 1)
IDENTITY_6 = np.full(256, IGNORE_INDEX, dtype=np.uint8)
IDENTITY_6[:6] = np.arange(6)
MMSEG_TO_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
MMSEG_TO_ID[1:7] = np.arange(6)  # 0 = eroded boundary -> ignore
LAYOUTS = {
    "mmseg": "<root>/img_dir/<train|val>/<id>.png and <root>/ann_dir/<train|val>/<id>.png (mmsegmentation's "
             "Potsdam converter run on 2_Ortho_RGB.zip and 5_Labels_all_noBoundary.zip from ISPRS)",
    "iic": "<root>/imgs/<id>.mat, <root>/gt/<id>.mat, <root>/labelled_train.txt and <root>/labelled_test.txt "
           "(the IIC Potsdam archive linked from STEGO's README)",
}
Layout = Literal["mmseg", "iic"]


def read_mat(path: Path, key: str) -> np.ndarray:
    """Array ``key`` of a MATLAB file (IIC's Potsdam tiles)."""
    from scipy.io import loadmat  # only this layout needs SciPy

    if not path.is_file():
        raise FileNotFoundError(f"file missing: {path}")
    content = loadmat(str(path))
    if key not in content:
        raise KeyError(f"{path}: no array {key!r} (has {[k for k in content if not k.startswith('__')]})")
    return np.asarray(content[key])


class PotsdamDataset(SegmentationDataset):
    """Potsdam tiles; ``lut`` maps the 6 class ids (0..5) to the module's classes."""

    def __init__(self, ids: list[str], root: Path, layout: Layout, folder: str, lut: np.ndarray, num_classes: int,
                 transform: Transform | None = None, prior_dir: Path | None = None) -> None:
        super().__init__(num_classes, transform, prior_dir)
        self.ids, self.root, self.layout, self.folder, self.lut = ids, root, layout, folder, lut

    def paths(self, index: int) -> tuple[Path, Path]:
        name = self.ids[index]
        if self.layout == "iic":
            return self.root / "imgs" / f"{name}.mat", self.root / "gt" / f"{name}.mat"
        return self.root / "img_dir" / self.folder / f"{name}.png", self.root / "ann_dir" / self.folder / f"{name}.png"

    def describe(self, index: int) -> str:
        return f"Potsdam tile {self.ids[index]!r} ({self.paths(index)[0]})"

    def load(self, index: int) -> dict[str, np.ndarray]:
        image_path, label_path = self.paths(index)
        if self.layout == "iic":
            image = read_mat(image_path, "img")[..., :3]
            if image.dtype != np.uint8:  # float tiles in [0, 1]
                image = np.clip(np.round(image.astype(np.float64) * 255), 0, 255).astype(np.uint8)
            ids = read_mat(label_path, "gt").astype(np.uint8)
        else:
            image, ids = read_rgb(image_path), MMSEG_TO_ID[read_index_png(label_path)]
        check_same_size(image, ids, image_path, label_path)
        return {"image": np.ascontiguousarray(image), "mask": self.lut[ids]}


class PotsdamDataModule(SegmentationDataModule):
    """Potsdam (6 classes) or Potsdam-3 (``merge3=True``) in the ``mmseg`` or ``iic`` layout.

    ``split_dirs`` names mmseg's folders for the train and test splits (``""``: the root's
    ``img_dir`` itself, as in a single-folder sample).
    """

    name = "potsdam"

    def __init__(self, *, merge3: bool = False, layout: Layout = "mmseg", val_fraction: float = 0.1,
                 split_dirs: dict[str, str] | None = None, **kwargs: Any) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}; valid: {list(LAYOUTS)}")
        self.class_names = CLASS_NAMES_3 if merge3 else CLASS_NAMES
        self.palette = PALETTE_3 if merge3 else PALETTE
        self.lut = MERGE_3 if merge3 else IDENTITY_6
        super().__init__(**kwargs)
        self.layout, self.val_fraction = layout, val_fraction
        self.split_dirs = dict(split_dirs or {"train": "train", "test": "val"})

    def _folder(self, split: str) -> str:
        return self.split_dirs["test" if split == "test" else "train"]

    def split_ids(self, split: str) -> list[str]:
        root = self.require_root(LAYOUTS[self.layout])
        if self.layout == "iic":
            ids = read_list(root / ("labelled_test.txt" if split == "test" else "labelled_train.txt"),
                            f"Potsdam ({LAYOUTS['iic']})")
        else:
            folder = root / "img_dir" / self._folder(split)
            ids = sorted(p.stem for p in folder.glob("*.png"))
            if not ids:
                raise FileNotFoundError(f"no Potsdam tiles under {folder}; expected {LAYOUTS['mmseg']}")
        return ids if split == "test" else holdout_split(ids, split, self.val_fraction, seed=0)

    def build_dataset(self, split: str, transform: Transform | None, prior_dir: Path | None) -> PotsdamDataset:
        root = self.require_root(LAYOUTS[self.layout])
        return PotsdamDataset(self.split_ids(split), root, self.layout, self._folder(split), self.lut,
                              self.num_classes, transform, prior_dir)
