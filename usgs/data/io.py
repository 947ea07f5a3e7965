"""Reading image and label files with errors that name the file and what was expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from usgs.data.transforms import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "binarise",
    "check_same_size",
    "decode_colours",
    "missing_files",
    "read_index_png",
    "read_list",
    "read_rgb",
]


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 [H,W,3] RGB (grey / palette / RGBA files are converted)."""
    if not path.is_file():
        raise FileNotFoundError(f"image file missing: {path}")
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def read_index_png(path: Path) -> np.ndarray:
    """A label image whose pixel values are class ids (mode L or P: the palette index) as uint8 [H,W]."""
    if not path.is_file():
        raise FileNotFoundError(f"label file missing: {path}")
    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            raise ValueError(
                f"label file {path} must be a single-channel (L) or palette (P) PNG, got mode {image.mode}"
            )
        return np.array(image)


def decode_colours(rgb: np.ndarray, colours: np.ndarray, ids: np.ndarray, path: Path) -> np.ndarray:
    """Colour-coded label [H,W,3] -> uint8 ids: pixel of ``colours[k]`` -> ``ids[k]``; unknown colours raise."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    keys = (colours[:, 0].astype(np.int64) << 16) | (colours[:, 1].astype(np.int64) << 8) | colours[:, 2]
    order = np.argsort(keys)
    position = np.clip(np.searchsorted(keys[order], codes), 0, len(keys) - 1)
    known = keys[order][position] == codes
    if not known.all():
        unknown = np.unique(rgb[~known].reshape(-1, 3), axis=0)[:5]
        raise ValueError(
            f"label file {path}: unknown colour(s) {unknown.tolist()}; expected one of {colours.tolist()}"
        )
    return ids[order][position].astype(np.uint8)


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    """Image and label must cover the same pixels; the error names both files."""
    if image.shape[:2] != label.shape[:2]:
        raise ValueError(
            f"size mismatch: image {image_path} is {image.shape[:2]} (H, W) but label {label_path} is {label.shape[:2]}"
        )


def read_list(path: Path, what: str) -> list[str]:
    """Non-empty lines of a split list file (first whitespace-separated field)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} list file missing: {path}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{what} list file {path} is empty")
    return ids


def missing_files(paths: dict[str, Path]) -> list[str]:
    """Ids whose file is missing."""
    return [key for key, path in paths.items() if not path.is_file()]


def binarise(mask: np.ndarray, threshold: int) -> np.ndarray:
    """Foreground mask {0,1} from a grey mask: value >= threshold -> 1 (JPEG masks are not exact 0/255)."""
    return (mask >= threshold).astype(np.uint8)


def read_saliency(path: Path, image: np.ndarray, image_path: Path) -> np.ndarray:
    """A saliency PNG as uint8 {0,1} of the image's size; 0/255 maps (as released) are thresholded at 128."""
    saliency = read_index_png(path)
    check_same_size(image, saliency, image_path, path)
    return binarise(saliency, 128) if saliency.max() > 1 else saliency
