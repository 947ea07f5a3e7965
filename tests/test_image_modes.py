"""Every image mode read right or refused (issue 28): ``read_rgb`` and the mask reader on 1, L, LA, P
(with and without transparency), RGB, RGBA, CMYK, I;16 / I;16B / I, EXIF orientation; masks never rescaled."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from usgs.data import io
from usgs.errors import DataError

GREY = (np.arange(12).reshape(3, 4) * 20).astype(np.uint8)
RGB = np.stack([GREY, 255 - GREY, GREY // 2], axis=-1)


def palette_image(transparent: bool) -> Image.Image:
    image = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) % 3, "L").convert("P")
    image.putpalette([10, 20, 30, 200, 0, 0, 0, 200, 0])
    if transparent:
        image.info["transparency"] = 1
    return image


@pytest.mark.parametrize(("mode", "make", "suffix", "pixel"), [
    ("1", lambda: Image.fromarray(GREY > 100), ".png", [255, 255, 255]),
    ("L", lambda: Image.fromarray(GREY), ".png", [220, 220, 220]),
    ("LA", lambda: Image.fromarray(np.stack([GREY, GREY], -1), "LA"), ".png", [220, 220, 220]),
    ("P", lambda: palette_image(False), ".png", [0, 200, 0]),
    ("P", lambda: palette_image(True), ".png", [0, 200, 0]),  # colours kept, transparency dropped
    ("RGB", lambda: Image.fromarray(RGB), ".png", [220, 35, 110]),
    ("RGBA", lambda: Image.fromarray(np.dstack([RGB, GREY]), "RGBA"), ".png", [220, 35, 110]),
    ("CMYK", lambda: Image.fromarray(RGB).convert("CMYK"), ".tif", [220, 35, 110]),
])
def test_eight_bit_modes_read_as_rgb(mode, make, suffix, pixel, tmp_path) -> None:
    path = tmp_path / f"image{suffix}"
    make().save(path)
    with Image.open(path) as image:
        assert image.mode == mode
    rgb = io.read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 4, 3)
    assert rgb[2, 3].tolist() == pixel


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_wide_grey_is_scaled_by_its_range_with_one_warning(mode, tmp_path, caplog) -> None:
    values = GREY.astype(np.int64) * 200 + 1000  # 1000 .. 45000: all 255 under PIL's convert("RGB")
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    for name in ("a.tif", "b.tif"):
        Image.frombytes(mode, (4, 3), values.astype(dtype).tobytes()).save(tmp_path / name)
    with caplog.at_level(logging.WARNING):
        first, _ = io.read_rgb(tmp_path / "a.tif"), io.read_rgb(tmp_path / "b.tif")
    assert first[..., 0].tolist()[0] == [0, 23, 46, 70] and first.max() == 255
    assert caplog.text.count("scaled by its own range") == 1  # once per folder, not per image


def test_other_modes_are_refused_naming_the_mode(tmp_path) -> None:
    Image.fromarray(GREY.astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match="float.tif has PIL mode F"):
        io.read_rgb(tmp_path / "float.tif")
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png must be a single-channel.*got mode RGB"):
        io.read_index_png(tmp_path / "rgb.png")


@pytest.mark.parametrize(("mode", "make"), [
    ("1", lambda ids: Image.fromarray(ids > 0)),
    ("L", lambda ids: Image.fromarray(ids)),
    ("LA", lambda ids: Image.fromarray(np.stack([ids, np.full_like(ids, 7)], -1), "LA")),
    ("P", lambda ids: Image.fromarray(ids, "L").convert("P")),
    ("I;16", lambda ids: Image.fromarray(ids.astype(np.uint16))),
    ("I", lambda ids: Image.frombytes("I", (4, 3), ids.astype("<i4").tobytes())),
])
def test_masks_keep_their_ids_in_every_mode(mode, make, tmp_path) -> None:
    ids = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1]], dtype=np.uint8) * (1 if mode == "1" else 255)
    if mode not in ("1",):
        ids = np.where(ids > 0, 255, 3).astype(np.uint8)  # ignore (255) and class 3: never rescaled
    path = tmp_path / ("mask.tif" if mode == "I" else "mask.png")
    make(ids).save(path)
    with Image.open(path) as image:
        assert image.mode == mode
    expected = (ids > 0).astype(np.uint8) if mode == "1" else ids
    assert io.read_index_png(path).tolist() == expected.tolist()


def test_wide_masks_with_ids_above_255_are_refused(tmp_path) -> None:
    Image.fromarray(np.full((3, 4), 300, dtype=np.uint16)).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m.png \(mode I;16\) holds values 300..300.*never rescaled"):
        io.read_index_png(tmp_path / "m.png")


def test_exif_orientation_turns_image_and_mask_alike(tmp_path) -> None:
    ids = np.arange(6, dtype=np.uint8).reshape(2, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(np.repeat(ids[..., None] * 40, 3, axis=2)).save(tmp_path / "i.png", exif=exif)
    Image.fromarray(ids).save(tmp_path / "m.png", exif=exif)
    image, mask = io.read_rgb(tmp_path / "i.png"), io.read_index_png(tmp_path / "m.png")
    assert mask.tolist() == np.rot90(ids, k=-1).tolist()
    assert (image[..., 0] // 40).tolist() == mask.tolist()
