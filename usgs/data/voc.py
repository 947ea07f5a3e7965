"""PASCAL VOC 2012 segmentation (Everingham et al., 2010) on its original ``VOCdevkit/VOC2012`` layout.

Training uses the 10,582-image ``train_aug`` list with the SBD-augmented labels
(``SegmentationClassAug``, Hariharan et al., 2011). The official test labels are not public, so the
1,449 official ``val`` images are the test split (as reported in the literature) and val is carved
out of the official ``train`` list (``val_from``; ``val_fraction`` = 0.1: 146 of 1,464 images, seeded,
removed from train_aug), both with the official ``SegmentationClass`` labels; both are palette PNGs whose palette index is the class id and
255 the void border. An optional saliency folder (one PNG per image, as released with MaskContrast,
Van Gansbeke et al., 2021) adds ``saliency`` to the batch.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from usgs.data.base import SegmentationDataModule, SegmentationDataset, Transform
from usgs.data.io import (
    check_same_size,
    missing_files,
    read_index_png,
    read_list,
    read_rgb,
    read_saliency,
)
from usgs.data.splits import holdout_split

log = logging.getLogger(__name__)

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
ARCHIVE_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
ARCHIVE_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
# Where the saliency folders of the paper recipes (conf/experiment/paper/) come from; none is shipped.
SALIENCY_SOURCES = (
    "saliency_supervised_model/ and saliency_unsupervised_model/: MaskContrast's released masks, inside its "
    "PASCAL_VOC.tgz (Google Drive id 1pxhY5vsLwXuz6UHZVUKhtb7EJdCg2kuH, linked from "
    "github.com/wvangansbeke/Unsupervised-Semantic-Segmentation); saliency_picanet/: masks you make with the "
    "image-level WSSS original's PiCANet (src/saliency/create_saliency.py of "
    "Amsterdam-Internships/Image-Level-Supervised-Semantic-Segmentation), 0/255 per image; or a cached "
    "saliency prior (data.prior=saliency_unsup)"
)
LAYOUT = (
    "<root> = VOCdevkit/VOC2012 with JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
    "SegmentationClassAug/<id>.png (SBD, for train_aug) and ImageSets/Segmentation/{train_aug,val}.txt"
)


def voc_palette(num_colours: int = 256) -> np.ndarray:
    """The VOC colour map (bit-interleaved class index), uint8 [num_colours, 3]."""
    palette = np.zeros((num_colours, 3), dtype=np.uint8)
    for index in range(num_colours):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


class VOCDataset(SegmentationDataset):
    """Images of one list file with labels from ``label_dir`` and optional saliency from ``saliency_dir``."""

    def __init__(
        self,
        ids: list[str],
        image_dir: Path,
        label_dir: Path,
        saliency_dir: Path | None = None,
        transform: Transform | None = None,
        prior_dir: Path | None = None,
    ) -> None:
        super().__init__(len(CLASS_NAMES), transform, prior_dir)
        self.ids, self.image_dir, self.label_dir, self.saliency_dir = ids, image_dir, label_dir, saliency_dir

    def describe(self, index: int) -> str:
        return f"VOC sample {self.ids[index]!r} ({', '.join(map(str, self.files(index)))})"

    def files(self, index: int) -> list[Path]:
        name = self.ids[index]
        files = [self.image_dir / f"{name}.jpg", self.label_dir / f"{name}.png"]
        return files + ([self.saliency_dir / f"{name}.png"] if self.saliency_dir is not None else [])

    def load(self, index: int) -> dict[str, np.ndarray]:
        name = self.ids[index]
        image_path, label_path = self.image_dir / f"{name}.jpg", self.label_dir / f"{name}.png"
        image, mask = read_rgb(image_path), read_index_png(label_path)
        check_same_size(image, mask, image_path, label_path)
        sample = {"image": image, "mask": mask}
        if self.saliency_dir is not None:
            sample["saliency"] = read_saliency(self.saliency_dir / f"{name}.png", image, image_path)
        return sample


class VOCDataModule(SegmentationDataModule):
    """PASCAL VOC 2012: ``train_list`` (train_aug) minus val for training, val carved, test = official val.

    Args (besides the base ones): ``list_dir`` (relative to root), ``train_list`` / ``val_list`` /
    ``test_list`` (list names without .txt; ``val_list=None``: val is the seeded ``val_fraction`` of
    the ``val_from`` list, ``split_seed``, and those ids leave train), ``train_label_dir`` / ``eval_label_dir``,
    ``saliency_dir`` (None = no saliency), ``missing``: "error" (default) or "skip" ids whose files
    are absent (e.g. the official lists on a subset).
    """

    name = "voc"
    class_names = CLASS_NAMES
    palette = voc_palette(len(CLASS_NAMES))

    def __init__(
        self,
        *,
        list_dir: str = "ImageSets/Segmentation",
        train_list: str = "train_aug",
        val_list: str | None = None,
        test_list: str = "val",
        val_from: str = "train",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        image_dir: str = "JPEGImages",
        train_label_dir: str = "SegmentationClassAug",
        eval_label_dir: str = "SegmentationClass",
        saliency_dir: str | None = None,
        missing: str = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if missing not in ("error", "skip"):
            raise ValueError(f"missing={missing!r}; valid: ['error', 'skip']")
        self.list_dir, self.image_dir, self.saliency_dir, self.missing = (
            list_dir,
            image_dir,
            saliency_dir,
            missing,
        )
        self.lists = {"train": train_list, "val": val_list, "test": test_list}
        self.label_dirs = {"train": train_label_dir, "val": eval_label_dir, "test": eval_label_dir}
        self.val_from, self.val_fraction, self.split_seed = val_from, val_fraction, split_seed

    def _read(self, name: str) -> list[str]:
        list_path = self.require_root(LAYOUT) / self.list_dir / f"{name}.txt"
        if not list_path.is_file():
            raise FileNotFoundError(
                f"VOC list file missing: {list_path}; expected {LAYOUT}. Run usgs.data.voc.prepare(root) "
                f"or put the SBD train_aug.txt there (see its docstring)"
            )
        return read_list(list_path, "VOC")

    def _listed(self, split: str) -> tuple[list[str], str]:
        """Ids of ``split`` before the file check, and where they come from (for messages)."""
        if split == "test" or self.lists["val"] is not None:
            return self._read(str(self.lists[split])), f"{self.lists[split]}.txt"
        carved = holdout_split(self._read(self.val_from), "val", self.val_fraction, self.split_seed)
        if split == "val":
            return carved, f"{self.val_from}.txt (seeded val_fraction={self.val_fraction})"
        taken = set(carved)
        return [
            i for i in self._read(str(self.lists["train"])) if i not in taken
        ], f"{self.lists['train']}.txt"

    def split_ids(self, split: str) -> list[str]:
        """Ids of the split's list whose image and label files exist (or an error listing the missing)."""
        root = self.require_root(LAYOUT)
        ids, list_path = self._listed(split)
        label_dir = root / self.label_dirs[split]
        files = {i: root / self.image_dir / f"{i}.jpg" for i in ids} | {
            f"{i} (label)": label_dir / f"{i}.png" for i in ids
        }
        absent = missing_files(files)
        if absent:
            first = files[absent[0]]
            if self.missing == "error":
                raise FileNotFoundError(
                    f"{len(absent)} of {2 * len(ids)} files listed by {list_path} are missing (first: {first}); "
                    f"expected {LAYOUT}; data.missing=skip keeps the listed ids that are present"
                )
            dropped = {key.split(" ")[0] for key in absent}
            ids = [i for i in ids if i not in dropped]
            log.warning("VOC %s: skipped %d ids of %s without files", split, len(dropped), list_path)
            if not ids:
                raise FileNotFoundError(f"no id of {list_path} has its files under {root}; expected {LAYOUT}")
        return ids

    def build_dataset(self, split: str, transform: Transform | None, prior_dir: Path | None) -> VOCDataset:
        root = self.require_root(LAYOUT)
        saliency = None
        if self.saliency_dir is not None:
            saliency = root / self.saliency_dir
            if not saliency.is_dir():
                raise FileNotFoundError(f"VOC saliency folder missing: {saliency} (one <id>.png per image). {SALIENCY_SOURCES}")
        return VOCDataset(
            self.split_ids(split),
            root / self.image_dir,
            root / self.label_dirs[split],
            saliency,
            transform,
            prior_dir,
        )


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare(root: str | Path, timeout: float = 10.0) -> Path:
    """Download (if needed), verify and extract the official VOC2012 trainval archive under ``root``.

    Returns ``<root>/VOCdevkit/VOC2012``. The SBD augmented labels cannot be fetched from an
    official checksummed source, so they are described, not downloaded. Offline, this fails at once
    with what to put where.
    """
    root = Path(root)
    archive = root / Path(ARCHIVE_URL).name
    target = root / "VOCdevkit" / "VOC2012"
    manual = (
        f"Put the official archive at {archive} (from {ARCHIVE_URL}, md5 {ARCHIVE_MD5}) and call "
        f"prepare again, or extract it so that {target}/JPEGImages and {target}/SegmentationClass exist. "
        f"For train_aug also put the SBD labels (SegmentationClassAug.zip of the DeepLab/SBD release) in "
        f"{target}/SegmentationClassAug/<id>.png and train_aug.txt in {target}/ImageSets/Segmentation/."
    )
    if not archive.is_file():
        root.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(".part")
        try:
            with urllib.request.urlopen(ARCHIVE_URL, timeout=timeout) as response, partial.open("wb") as out:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as error:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"cannot download {ARCHIVE_URL} ({error}). {manual}") from error
        partial.replace(archive)
    checksum = _md5(archive)
    if checksum != ARCHIVE_MD5:
        raise RuntimeError(
            f"{archive} has md5 {checksum}, expected {ARCHIVE_MD5}; delete it and retry. {manual}"
        )
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    log.info("VOC2012 extracted to %s. %s", target, manual.split(". ", 1)[1])
    return target
