"""Reading image and label files with errors that name the file and what was expected."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from usgs.data.transforms import IGNORE_INDEX
from usgs.errors import DataError, UnreadableFileError, UserError

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

log = logging.getLogger(__name__)

# PIL modes read_rgb reads, converted by PIL (alpha dropped; palette with transparency through RGBA;
# CMYK by PIL's plain formula, no colour profile).
RGB_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK")
# 16- and 32-bit integer grey: PIL's convert("RGB") clips them at 255 (a 16-bit PNG turns white), so
# they are scaled by the image's actual range (min -> 0, max -> 255) instead.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Masks hold class ids: single channel or palette indices, never rescaled (LA: the alpha is dropped).
MASK_MODES = ("1", "L", "LA", "P", *WIDE_GREY_MODES)
_warned_wide: set[tuple[str, Path]] = set()  # (mode, folder): the scaling is announced once per folder


def _decode(path: Path, what: str, read: Callable[[Image.Image, Path], np.ndarray]) -> np.ndarray:
    """Open ``path`` with PIL, apply its EXIF orientation, ``read`` it; a decoder failure names the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file missing: {path}")
    try:
        with Image.open(path) as image:
            ImageOps.exif_transpose(image, in_place=True)  # phone photos: pixels as the viewer shows them
            return read(image, path)
    except UserError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # truncated, corrupt, not an image
        raise UnreadableFileError(f"cannot decode {what} file {path}: {type(err).__name__}: {err}") from err


def _scaled_grey(image: Image.Image, path: Path) -> np.ndarray:
    values = np.asarray(image)
    low, high = int(values.min()), int(values.max())
    if (image.mode, path.parent) not in _warned_wide:
        _warned_wide.add((image.mode, path.parent))
        log.warning("%s is %d-bit grey (mode %s, values %d..%d): each image of %s in this mode is scaled by "
                    "its own range to 0..255", path, 8 * values.dtype.itemsize, image.mode, low, high, path.parent)
    if high == low:
        return np.zeros((*values.shape, 3), dtype=np.uint8)
    scaled = ((values.astype(np.float32) - low) * (255.0 / (high - low))).round().astype(np.uint8)
    return np.repeat(scaled[..., None], 3, axis=2)


def _rgb(image: Image.Image, path: Path) -> np.ndarray:
    if image.mode in WIDE_GREY_MODES:
        return _scaled_grey(image, path)
    if image.mode not in RGB_MODES:
        raise DataError(f"image file {path} has PIL mode {image.mode}, which is not read; expected one of "
                        f"{', '.join(RGB_MODES + WIDE_GREY_MODES)} (convert it, e.g. to RGB)")
    if image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")  # PIL's advice for palettes with transparency
    return np.array(image.convert("RGB"))


def _ids(what: str) -> Callable[[Image.Image, Path], np.ndarray]:
    def read(image: Image.Image, path: Path) -> np.ndarray:
        if image.mode not in MASK_MODES:
            raise DataError(f"{what} file {path} must be a single-channel (L, 1, I;16, I) or palette (P) image of "
                            f"class ids, got mode {image.mode}")
        values = np.array(image.getchannel("L") if image.mode == "LA" else image)
        if values.dtype == np.bool_:  # mode 1: ids 0 and 1
            return values.astype(np.uint8)
        if values.dtype != np.uint8:
            low, high = int(values.min()), int(values.max())
            if low < 0 or high > 255:
                raise DataError(f"{what} file {path} (mode {image.mode}) holds values {low}..{high}; class ids "
                                f"must be 0..255 ({IGNORE_INDEX} = ignore): masks are never rescaled")
            values = values.astype(np.uint8)
        return values

    return read


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 [H,W,3] RGB, EXIF orientation applied. Modes: :data:`RGB_MODES` (PIL's
    conversion) and :data:`WIDE_GREY_MODES` (scaled by the image's range, with a warning); others refused."""
    return _decode(path, "image", _rgb)


def read_index_png(path: Path, what: str = "label") -> np.ndarray:
    """A label image whose pixel values are class ids (the palette index for P) as uint8 [H,W], EXIF
    orientation applied like its image's; 16-/32-bit ids must be 0..255 (never rescaled)."""
    return _decode(path, what, _ids(what))


def decode_colours(rgb: np.ndarray, colours: np.ndarray, ids: np.ndarray, path: Path) -> np.ndarray:
    """Colour-coded label [H,W,3] -> uint8 ids: pixel of ``colours[k]`` -> ``ids[k]``; unknown colours raise."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    keys = (colours[:, 0].astype(np.int64) << 16) | (colours[:, 1].astype(np.int64) << 8) | colours[:, 2]
    order = np.argsort(keys)
    position = np.clip(np.searchsorted(keys[order], codes), 0, len(keys) - 1)
    known = keys[order][position] == codes
    if not known.all():
        unknown = np.unique(rgb[~known].reshape(-1, 3), axis=0)[:5]
        raise DataError(
            f"label file {path}: unknown colour(s) {unknown.tolist()}; expected one of {colours.tolist()}"
        )
    return ids[order][position].astype(np.uint8)


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    """Image and label must cover the same pixels; the error names both files."""
    if image.shape[:2] != label.shape[:2]:
        raise DataError(
            f"size mismatch: image {image_path} is {image.shape[:2]} (H, W) but label {label_path} is {label.shape[:2]}"
        )


def read_list(path: Path, what: str) -> list[str]:
    """Non-empty lines of a split list file (first whitespace-separated field)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} list file missing: {path}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{what} list file {path} is empty")
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
    raise DataError(
        f"saliency file {path}: values {values.tolist()[:10]} are neither a label map (subset of 0, 1, "
        f"255 with 1 = foreground, 255 = ignore) nor a grey 0..255 map (thresholded at 128)"
    )
