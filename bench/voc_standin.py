"""A generated stand-in for PASCAL VOC 2012 in its on-disk layout, at VOC's image sizes (bench/scale.py).

    <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg                 ~500x375 (VOC's sizes, both orientations)
    <root>/VOCdevkit/VOC2012/SegmentationClass{,Aug}/<id>.png    class ids 0..20, 255 on object borders
    <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train_aug,train,val}.txt

``train_aug`` and ``train`` list the ``n`` scale images (``data=voc`` carves val out of ``train``);
``val`` (data=voc's test split) lists ``test`` further images. Each image is a textured background
with 1-4 filled ellipses / rectangles whose colour depends on their class, JPEG quality 90: the
decode, resize and label-reading costs of real VOC files, not their content. Seeded: the same
``(n, seed)`` gives the same files.

Why not ``usgs.data.standin.voc`` (the recipes' dry-run stand-in): that one writes a few 500x375
images with piecewise-constant labels for shape checks; the scale benchmark needs thousands of
images in VOC's mix of sizes and orientations, labels with VOC's 255 object borders (the loaders'
ignore handling is part of the cost), and a writer that completes a partly written folder
(``make_voc_standin`` skips files that exist), so a stopped benchmark resumes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (480, 360))  # (width, height), VOC's common sizes
NUM_CLASSES = 21


def _image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    base = rng.integers(40, 200, 3)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (h, w, 3)).astype(np.float32), (0, 0), 3)
    image = np.clip(base + noise, 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, NUM_CLASSES))
        colour = tuple(int(v) for v in (np.array([cls * 37, cls * 71, cls * 113]) % 200 + 30))
        cx, cy = int(rng.integers(w)), int(rng.integers(h))
        ax, ay = int(rng.integers(20, w // 3)), int(rng.integers(20, h // 3))
        if rng.random() < 0.5:
            cv2.ellipse(image, (cx, cy), (ax, ay), 0, 0, 360, colour, -1)
            cv2.ellipse(mask, (cx, cy), (ax, ay), 0, 0, 360, cls, -1)
            cv2.ellipse(mask, (cx, cy), (ax, ay), 0, 0, 360, 255, 3)  # VOC's void border
        else:
            cv2.rectangle(image, (cx - ax, cy - ay), (cx + ax, cy + ay), colour, -1)
            cv2.rectangle(mask, (cx - ax, cy - ay), (cx + ax, cy + ay), cls, -1)
            cv2.rectangle(mask, (cx - ax, cy - ay), (cx + ax, cy + ay), 255, 3)
    return image, mask


def make_voc_standin(root: Path, n: int, test: int = 20, seed: int = 0) -> Path:
    """Write (or complete) the stand-in under ``root``; returns its ``VOCdevkit/VOC2012`` folder."""
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    lists.mkdir(parents=True, exist_ok=True)
    ids = [f"2026_{i:06d}" for i in range(n + test)]
    for i, name in enumerate(ids):
        if (voc / "SegmentationClassAug" / f"{name}.png").is_file():
            continue  # written by an earlier (possibly interrupted) call; the label is written last
        image, mask = _image(np.random.default_rng([seed, i]))
        cv2.imwrite(str(voc / "JPEGImages" / f"{name}.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(str(voc / "SegmentationClass" / f"{name}.png"), mask)
        cv2.imwrite(str(voc / "SegmentationClassAug" / f"{name}.png"), mask)
    (lists / "train_aug.txt").write_text("\n".join(ids[:n]) + "\n")
    (lists / "train.txt").write_text("\n".join(ids[:n]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids[n:]) + "\n")
    return voc
