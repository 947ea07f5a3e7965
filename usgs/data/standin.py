"""Stand-in datasets: a few synthetic files in each real dataset's on-disk layout, at its real image size.

They exist to run the papers' recipes (conf/experiment/paper/) end to end without the real data, e.g.
``bench/recipe_dryrun.py``, which times full-size optimiser steps: the loaders, transforms, crops and
networks see exactly the shapes and file formats of the real data, only the pixels are made up
(piecewise-constant label maps, one colour per class plus noise). Nothing here is a result.

``python -m usgs.data.standin <out dir> [--n N]`` writes every layout; each writer returns the folder
that is the dataset's ``data.root``:

* ``voc``: ``VOCdevkit/VOC2012`` (500x375 JPEGs, palette PNG labels in ``SegmentationClass`` and
  ``SegmentationClassAug``, saliency PNGs 0/255 in ``saliency_{supervised,unsupervised}_model`` and
  ``saliency_picanet``, ``ImageSets/Segmentation/{train,val,train_aug}.txt``);
* ``cityscapes``: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``,
  2048x1024, raw ids 0..33;
* ``vaihingen``: ``top/``, ``gts_for_participants/``, ``gts_eroded/`` colour-coded tifs, 2500x2000;
* ``intel``: ``seg_{train,test}/seg_{train,test}/<class>/<n>.jpg``, 150x150;
* ``cocostuff``: ``images/{train,val}2017/<id>.jpg`` (640x480), ``annotations/.../<id>.png`` (fine ids
  0..181, 255 unlabelled) and the IIC curated lists.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from usgs.data import cocostuff, intel, vaihingen, voc

# The real sizes (height, width): VOC's typical 500x375 landscape frame, a Cityscapes frame, a
# Vaihingen tile (the tiles are ~1900-2800 px a side), Intel's 150x150, COCO's typical 640x480.
SIZES = {"voc": (375, 500), "cityscapes": (1024, 2048), "vaihingen": (2500, 2000), "intel": (150, 150),
         "cocostuff": (480, 640)}


def label_map(rng: np.random.Generator, size: tuple[int, int], ids: Sequence[int], blocks: int = 4) -> np.ndarray:
    """uint8 [H,W]: a background id with ``blocks`` random rectangles of other ids (piecewise constant)."""
    height, width = size
    out = np.full((height, width), ids[0], np.uint8)
    for _ in range(blocks):
        h, w = int(rng.integers(height // 6, height // 2 + 1)), int(rng.integers(width // 6, width // 2 + 1))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        out[top : top + h, left : left + w] = ids[int(rng.integers(0, len(ids)))]
    return out


def picture(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3]: one colour per label id plus Gaussian noise (so that colour clusters mean something)."""
    colours = np.random.default_rng(7).integers(30, 226, (256, 3))
    noise = rng.normal(0.0, 12.0, labels.shape + (3,))
    return np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)


def _palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels, mode="P")
    image.putpalette(voc.voc_palette(256).reshape(-1).tolist())
    image.save(path)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(array).save(path)


def write_voc(out: Path, n: int = 8, size: tuple[int, int] = SIZES["voc"], seed: int = 0) -> Path:
    """VOC 2012: ``n`` images, half on the official train list, half on val; train_aug = all train."""
    rng, root = np.random.default_rng(seed), out / "VOCdevkit" / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(n)]
    for name in ids:
        labels = label_map(rng, size, [0, *rng.choice(np.arange(1, 21), 2, replace=False).tolist()])
        labels[:3] = 255  # a void border, as the official labels have
        _save(root / "JPEGImages" / f"{name}.jpg", picture(rng, labels))
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            _palette_png(root / folder / f"{name}.png", labels)
        salient = np.where((labels > 0) & (labels < 255), 255, 0).astype(np.uint8)
        for folder in ("saliency_supervised_model", "saliency_unsupervised_model", "saliency_picanet"):
            _save(root / folder / f"{name}.png", salient)
    half = max(1, n // 2)
    lists = {"train": ids[:half], "val": ids[half:] or ids[:1], "train_aug": ids[:half]}
    for name, members in lists.items():
        path = root / "ImageSets" / "Segmentation" / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i}\n" for i in members))
    return root


def write_cityscapes(out: Path, n: int = 4, size: tuple[int, int] = SIZES["cityscapes"], seed: int = 0) -> Path:
    """Cityscapes fine: ``n`` train frames (two cities) and ``n // 2`` val frames, raw label ids 0..33."""
    rng, root = np.random.default_rng(seed), out / "cityscapes"
    frames = [("train", "aachen" if i % 2 else "bochum", i) for i in range(n)]
    frames += [("val", "frankfurt", i) for i in range(max(1, n // 2))]
    for split, city, i in frames:
        name = f"{city}_{i:06d}_000019"
        labels = label_map(rng, size, [7, 8, 11, 21, 23, 24, 26], blocks=6)  # road, sidewalk, building, ...
        _save(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", picture(rng, labels))
        _save(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", labels)
    return root


def write_vaihingen(out: Path, areas: Sequence[int] = vaihingen.AREAS, size: tuple[int, int] = SIZES["vaihingen"],
                    seed: int = 0) -> Path:
    """ISPRS Vaihingen tiles ``areas``: IRRG top tif, full and eroded colour-coded ground truth."""
    rng, root = np.random.default_rng(seed), out / "vaihingen"
    for area in areas:
        labels = label_map(rng, size, [0, 1, 2, 3, 4, 5], blocks=12)
        colour = vaihingen.COLOURS[labels]
        eroded = colour.copy()
        edges = np.zeros(labels.shape, bool)
        edges[1:] |= labels[1:] != labels[:-1]
        edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        eroded[edges] = 0  # black = the eroded boundary
        for folder, data, suffix in (("top", picture(rng, labels), ""), ("gts_for_participants", colour, ""),
                                     ("gts_eroded", eroded, "_noBoundary")):
            path = root / folder / f"top_mosaic_09cm_area{area}{suffix}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, data)
    return root


def write_intel(out: Path, n: int = 2, size: tuple[int, int] = SIZES["intel"], seed: int = 0) -> Path:
    """Intel Image Classification: ``n`` images per class in seg_train and in seg_test."""
    rng, root = np.random.default_rng(seed), out / "intel_image_classification"
    for split in ("seg_train", "seg_test"):
        for c, name in enumerate(intel.CLASS_NAMES):
            for i in range(n):
                labels = label_map(rng, size, [c, (c + 1) % 6, (c + 3) % 6])
                _save(root / split / split / name / f"{c * 1000 + i}.jpg", picture(rng, labels))
    return root


def write_cocostuff(out: Path, n: int = 4, size: tuple[int, int] = SIZES["cocostuff"], seed: int = 0) -> Path:
    """COCO-Stuff: ``n`` curated train and ``n // 2`` val images, fine ids 0..181 and 255."""
    rng, root = np.random.default_rng(seed), out / "cocostuff"
    for folder, count, listed in (("train2017", n, cocostuff.TRAIN_LIST), ("val2017", max(1, n // 2),
                                                                        cocostuff.TEST_LIST)):
        ids = [f"{i:012d}" for i in range(count)]
        for name in ids:
            labels = label_map(rng, size, [0, 95, 123, 150, 255], blocks=5)
            _save(root / "images" / folder / f"{name}.jpg", picture(rng, labels))
            _save(root / "annotations" / folder / f"{name}.png", labels)
        path = root / listed
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i}\n" for i in ids))
    return root


WRITERS = {"voc": write_voc, "cityscapes": write_cityscapes, "vaihingen": write_vaihingen, "intel": write_intel,
           "cocostuff": write_cocostuff}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--datasets", nargs="+", default=list(WRITERS), choices=list(WRITERS))
    parser.add_argument("--scale", type=float, default=1.0, help="image size factor (1 = the real size)")
    args = parser.parse_args(argv)
    for name in args.datasets:
        size = tuple(max(8, round(s * args.scale)) for s in SIZES[name])
        print(f"{name}: {WRITERS[name](args.out, size=size)}")  # type: ignore[operator]


if __name__ == "__main__":
    main()
