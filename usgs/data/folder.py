"""Any dataset laid out as ``images/`` + ``masks/`` (+ optional ``saliency/``), classes from the config.

Layout: ``<root>/<image_dir>/<stem>.<jpg|jpeg|png>`` and ``<root>/<mask_dir>/<stem><mask_ext>``
(single-channel or palette PNG whose values are class ids, 255 = ignore). Splits (``split_sources``):
- no sub-folders: a seeded three-way split, ``test_fraction`` to test, ``val_fraction`` to val;
- ``train/``, ``val/`` and ``test/`` sub-folders (same below ``mask_dir``): they are the splits;
- ``train/`` and one held-out folder (``val/`` or ``test/``): the held-out folder is test and val is
  carved out of ``train/`` (``val_fraction``, seeded), as for VOC and Cityscapes.

Options for figure/ground data (Weizmann horses, see `usgs.data.weizmann`): ``mask_threshold``
binarises grey masks (value >= threshold -> 1), ``resize_image_to_mask`` resizes images that come at
a different resolution than their masks, ``saliency_from_mask`` adds the mask as ``saliency``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from usgs.data.base import SegmentationDataModule, SegmentationDataset, Transform
from usgs.data.io import binarise, check_same_size, read_index_png, read_rgb, read_saliency
from usgs.data.splits import SPLITS, holdout_split, split_sources
from usgs.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class FolderDataset(SegmentationDataset):
    """Pairs ``ids`` of ``image_dir``/``mask_dir`` (see module docstring)."""

    def __init__(
        self,
        ids: list[str],
        image_paths: dict[str, Path],
        mask_dir: Path,
        num_classes: int,
        mask_ext: str = ".png",
        saliency_dir: Path | None = None,
        mask_threshold: int | None = None,
        resize_image_to_mask: bool = False,
        saliency_from_mask: bool = False,
        transform: Transform | None = None,
        prior_dir: Path | None = None,
    ) -> None:
        super().__init__(num_classes, transform, prior_dir)
        self.ids, self.image_paths, self.mask_dir, self.mask_ext = ids, image_paths, mask_dir, mask_ext
        self.saliency_dir, self.mask_threshold = saliency_dir, mask_threshold
        self.resize_image_to_mask, self.saliency_from_mask = resize_image_to_mask, saliency_from_mask

    def describe(self, index: int) -> str:
        return f"sample {self.ids[index]!r} ({', '.join(map(str, self.files(index)))})"

    def files(self, index: int) -> list[Path]:
        name = self.ids[index]
        files = [self.image_paths[name], self.mask_dir / f"{name}{self.mask_ext}"]
        if self.saliency_dir is not None and not self.saliency_from_mask:
            files.append(self.saliency_dir / f"{name}.png")
        return files

    def _mask(self, path: Path) -> np.ndarray:
        if self.mask_threshold is None:
            return read_index_png(path)
        grey = read_rgb(path).mean(axis=2)  # JPEG masks: any mode, thresholded
        return binarise(grey, self.mask_threshold)

    def load(self, index: int) -> dict[str, np.ndarray]:
        name = self.ids[index]
        image_path, mask_path = self.image_paths[name], self.mask_dir / f"{name}{self.mask_ext}"
        image, mask = read_rgb(image_path), self._mask(mask_path)
        if self.resize_image_to_mask and image.shape[:2] != mask.shape:
            image = cv2.resize(image, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_AREA)
        check_same_size(image, mask, image_path, mask_path)
        sample = {"image": image, "mask": mask}
        if self.saliency_from_mask:
            sample["saliency"] = (mask > 0).astype(np.uint8)
        elif self.saliency_dir is not None:
            sample["saliency"] = read_saliency(self.saliency_dir / f"{name}.png", image, image_path)
        return sample


class FolderDataModule(SegmentationDataModule):
    """A user's own segmentation folder; ``class_names`` (and ``palette``) come from the config."""

    name = "folder"

    def __init__(
        self,
        *,
        class_names: list[str],
        palette: list[list[int]] | None = None,
        dataset_name: str | None = None,
        image_dir: str = "images",
        mask_dir: str = "masks",
        mask_ext: str = ".png",
        saliency_dir: str | None = None,
        mask_threshold: int | None = None,
        resize_image_to_mask: bool = False,
        saliency_from_mask: bool = False,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.class_names = tuple(class_names)
        if dataset_name is not None:
            self.name = dataset_name  # the prior cache folder of this dataset
        rng = np.random.default_rng(0)  # fixed colours when the config gives none
        colours = palette if palette is not None else rng.integers(0, 256, (len(class_names), 3)).tolist()
        self.palette = np.array(colours, dtype=np.uint8).reshape(len(class_names), 3)
        super().__init__(**kwargs)
        self.image_dir, self.mask_dir, self.mask_ext, self.saliency_dir = (
            image_dir,
            mask_dir,
            mask_ext,
            saliency_dir,
        )
        self.mask_threshold, self.resize_image_to_mask = mask_threshold, resize_image_to_mask
        self.saliency_from_mask, self.split_seed = saliency_from_mask, split_seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def layout(self) -> str:
        return (
            f"<root>/{self.image_dir}/[<split>/]<stem>{{{','.join(IMAGE_EXTS)}}} and "
            f"<root>/{self.mask_dir}/[<split>/]<stem>{self.mask_ext}"
        )

    def split_sources(self) -> dict[str, tuple[str | None, bool]]:
        """Per split: (sub-folder or None for a flat folder, whether a seeded split picks its ids)."""
        image_dir = self.require_root(self.layout()) / self.image_dir
        present = [s for s in SPLITS if (image_dir / s).is_dir()]
        if not present:
            return {s: (None, True) for s in SPLITS}
        if "train" not in present or len(present) == 1:
            raise FileNotFoundError(
                f"{image_dir} has sub-folder(s) {present}: expected train/ and val/ and/or test/ "
                f"(or no sub-folders for a seeded split); layout {self.layout()}"
            )
        # train/ + one held-out folder (val/ or test/): that folder is test, val is carved from train/
        dirs = {s: s for s in present} if len(present) == 3 else {"train": "train", "test": present[1]}
        return dict(split_sources(dirs, f"data {self.name!r}"))

    def build_dataset(self, split: str, transform: Transform | None, prior_dir: Path | None) -> FolderDataset:
        root = self.require_root(self.layout())
        image_dir, mask_dir = root / self.image_dir, root / self.mask_dir
        saliency_dir = root / self.saliency_dir if self.saliency_dir is not None else None
        folder, seeded = self.split_sources()[split]
        if folder is not None:
            image_dir, mask_dir = image_dir / folder, mask_dir / folder
            saliency_dir = saliency_dir / folder if saliency_dir is not None else None
        for path in (image_dir, mask_dir, saliency_dir):
            if path is not None and not path.is_dir():
                raise FileNotFoundError(f"folder missing: {path}; expected {self.layout()}")
        paths: dict[str, Path] = {}
        for path in sorted(image_dir.iterdir()):
            if path.suffix.lower() in IMAGE_EXTS:
                if path.stem in paths:  # one id, two pictures: which one is meant is unknowable
                    raise DataError(
                        f"two images with the stem {path.stem!r}: {paths[path.stem]} and {path}; keep one"
                    )
                paths[path.stem] = path
        if not paths:
            raise FileNotFoundError(f"no images in {image_dir}; expected {self.layout()}")
        ids = sorted(paths)
        if seeded:  # flat: three-way; train/ + one held-out folder: val carved out of train/
            test_fraction = self.test_fraction if folder is None else 0.0
            ids = holdout_split(ids, split, self.val_fraction, self.split_seed, test_fraction)
        return FolderDataset(
            ids,
            paths,
            mask_dir,
            self.num_classes,
            self.mask_ext,
            saliency_dir,
            self.mask_threshold,
            self.resize_image_to_mask,
            self.saliency_from_mask,
            transform,
            prior_dir,
        )

    def split_ids(self, split: str) -> list[str]:
        """Ids prefixed with their sub-folder: files of different folders are different images."""
        folder, _ = self.split_sources()[split]
        ids = self.build_dataset(split, None, None).ids
        return [f"{folder}/{i}" for i in ids] if folder is not None else ids
