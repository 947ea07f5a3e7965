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
    "read_saliency",
]


def _decode(path: Path, what: str, mode: str | None) -> np.ndarray:
    """Decode ``path`` with PIL (converted to ``mode`` if given); any decoder failure names the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file missing: {path}")
    try:
        with Image.open(path) as image:
            if mode is None and image.mode not in ("L", "P"):
                raise ValueError(
                    f"{what} file {path} must be a single-channel (L) or palette (P) PNG, got mode {image.mode}"
                )
            return np.array(image.convert(mode) if mode else image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # truncated, corrupt, not an image
        raise OSError(f"cannot decode {what} file {path}: {type(err).__name__}: {err}") from err


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 [H,W,3] RGB (grey / palette / RGBA files are converted)."""
    return _decode(path, "image", "RGB")


def read_index_png(path: Path, what: str = "label") -> np.ndarray:
    """A label image whose pixel values are class ids (mode L or P: the palette index) as uint8 [H,W]."""
    return _decode(path, what, None)


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
    """A saliency PNG as uint8 {0,1,255} (1 = foreground, 255 = ignore) of the image's size.

    Two encodings are read: a label map whose values are a subset of {0, 1, 255} with a 1 in it keeps
    1 = foreground and 255 = ignore; a grey 0..255 map (the 0/255 maps released with MaskContrast, or
    soft maps) is thresholded at 128. Any other value set (e.g. {0, 2} or {0, 3, 7}: a class-id mask, or
    a map that the threshold would make all background) is an error naming the file and its values.
    """
    saliency = read_index_png(path, "saliency")
    check_same_size(image, saliency, image_path, path)
    values = np.unique(saliency)
    if set(values.tolist()) <= {0, 1, 255} and (1 in values or values.max() == 0):
        return saliency
    if values.max() >= 128:
        return binarise(saliency, 128)
    raise ValueError(
        f"saliency file {path}: values {values.tolist()[:10]} are neither a label map (subset of 0, 1, "
        f"255 with 1 = foreground, 255 = ignore) nor a grey 0..255 map (thresholded at 128)"
    )
