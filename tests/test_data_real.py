"""VOC, Cityscapes and Vaihingen loaders on the real files in ../shared/data (skipped when absent)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage

from usgs.data import voc
from usgs.data.cityscapes import CityscapesDataModule, labelids_to_trainids
from usgs.data.io import decode_colours, read_list
from usgs.data.transforms import TrainTransform
from usgs.data.vaihingen import AREAS, COLOURS, VaihingenDataModule, seed_split
from usgs.data.voc import VOCDataModule

BASE = {"batch_size": 2, "num_workers": 0}
VOC_SUB = "voc2012_mini/VOCdevkit/VOC2012"
CITY_SUB = "mmseg_real_samples/pseudo_cityscapes_dataset"
FRAME = "frankfurt/frankfurt_000000_000294"


def _voc(shared_data: Path, **kwargs: object) -> VOCDataModule:
    return VOCDataModule(root=shared_data / VOC_SUB, num_classes=21, **BASE, **kwargs)  # type: ignore[arg-type]


def test_voc_palette_png_decoding_and_void(shared_data: Path) -> None:
    ds = _voc(shared_data, train_list="train").dataset("test", transform=None)  # test = official val
    assert ds.ids == ["2007_000033", "2007_000042"]
    mask = ds.load(0)["mask"]
    rgb = np.array(Image.open(shared_data / VOC_SUB / "SegmentationClass/2007_000033.png").convert("RGB"))
    # our palette reproduces the file's colours; the void border (255) is VOC's cream colour
    np.testing.assert_array_equal(voc.voc_palette()[mask], rgb)
    assert (rgb[mask == 255] == (224, 224, 192)).all() and (mask == 255).any()
    sample = ds[0]
    assert set(sample["mask"].unique().tolist()) == {0, 1, 255}
    torch.testing.assert_close(sample["labels"], torch.eye(21)[0] + torch.eye(21)[1])


def test_voc_train_aug_list_handling(shared_data: Path) -> None:
    lists = shared_data / VOC_SUB / "ImageSets/Segmentation/official_full"
    train_aug, val = read_list(lists / "train_aug.txt", "VOC"), read_list(lists / "val.txt", "VOC")
    assert len(train_aug) == 10582 and len(val) == 1449 and not set(train_aug) & set(val)
    strict = _voc(shared_data, list_dir="ImageSets/Segmentation/official_full")
    with pytest.raises(
        # train_aug minus the 146 val ids carved out of the official train list: 10,436 ids
        FileNotFoundError,
        match=r"20868 of 20872 files listed by .*train_aug.txt are missing",
    ):
        strict.dataset("train")
    dm = _voc(
        shared_data,
        list_dir="ImageSets/Segmentation/official_full",
        missing="skip",
        train_transform=TrainTransform(96),
    )
    train = dm.dataset("train", transform=None)
    assert train.ids == ["2007_000032", "2007_000039"]
    assert train.label_dir.name == "SegmentationClassAug"
    assert dm.dataset("test", transform=None).label_dir.name == "SegmentationClass"
    # the default layout has no train_aug.txt on this subset: the error says where it goes
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/train_aug.txt.*prepare"):
        _voc(shared_data).dataset("train")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 96, 96) and batch["mask"].dtype == torch.int64


def test_voc_saliency_folder(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    root.mkdir()
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets"):
        (root / sub).symlink_to(shared_data / VOC_SUB / sub)
    (root / "saliency").mkdir()
    size = Image.open(root / "JPEGImages/2007_000033.jpg").size
    saliency = np.zeros(size[::-1], np.uint8)
    saliency[50:100, 20:60] = 255  # released maps are 0/255
    for name in ("2007_000033", "2007_000042"):
        Image.fromarray(saliency if name.endswith("33") else saliency[:10]).save(
            root / "saliency" / f"{name}.png"
        )
    ds = VOCDataModule(root=root, num_classes=21, saliency_dir="saliency", **BASE).dataset(
        "test", transform=None
    )
    np.testing.assert_array_equal(ds[0]["saliency"].numpy(), saliency // 255)
    with pytest.raises(ValueError, match=r"2007_000042.jpg is .* but label .*saliency/2007_000042.png"):
        ds.load(1)
    with pytest.raises(FileNotFoundError, match="saliency folder missing"):
        VOCDataModule(root=root, num_classes=21, saliency_dir="nothing", **BASE).dataset("test")


def test_voc_prepare_fails_fast_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(voc.urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match=r"cannot download .*VOCtrainval_11-May-2012.tar.*JPEGImages"):
        voc.prepare(tmp_path)
    assert not list(tmp_path.iterdir())  # no partial archive left behind
    (tmp_path / "VOCtrainval_11-May-2012.tar").write_bytes(b"not the archive")
    with pytest.raises(RuntimeError, match="expected 6cd6e144f989b92b3379bac3b3de84fd"):
        voc.prepare(tmp_path)


def test_cityscapes_trainids_match_the_shipped_labeltrainids(shared_data: Path) -> None:
    root = shared_data / CITY_SUB
    ds = CityscapesDataModule(root=root, num_classes=19, **BASE).dataset("test", transform=None)  # = val/
    assert ds.ids == [FRAME]
    shipped = np.array(Image.open(root / f"gtFine/val/{FRAME}_gtFine_labelTrainIds.png"))
    label_ids = np.array(Image.open(root / f"gtFine/val/{FRAME}_gtFine_labelIds.png"))
    mapped = ds.load(0)["mask"]
    # This frame's labelIds and labelTrainIds were downscaled (to 256x128) separately, so 77 of 32768
    # pixels differ, all on a label boundary of the shipped image; everywhere else they are equal.
    boundary = ndimage.maximum_filter(shipped, 3) != ndimage.minimum_filter(shipped, 3)
    np.testing.assert_array_equal(mapped[~boundary], shipped[~boundary])
    assert (mapped != shipped).mean() < 0.003
    for raw_id in np.unique(label_ids):  # every table entry present: the majority of the shipped ids
        values, counts = np.unique(shipped[label_ids == raw_id], return_counts=True)
        assert labelids_to_trainids(raw_id) == values[counts.argmax()], raw_id
    raw = CityscapesDataModule(root=root, num_classes=34, label_mode="raw", **BASE).dataset(
        "test", transform=None
    )
    np.testing.assert_array_equal(raw.load(0)["mask"], label_ids)
    with pytest.raises(ValueError, match="num_classes=19 but the dataset has 34"):
        CityscapesDataModule(root=root, num_classes=19, label_mode="raw", **BASE)
    with pytest.raises(FileNotFoundError, match="leftImg8bit/train.*cityscapes-dataset.com"):
        CityscapesDataModule(root=root, num_classes=19, **BASE).dataset("train")


def _vaihingen(shared_data: Path, **kwargs: object) -> VaihingenDataModule:
    tiles = {
        "train_tiles": [1],
        "val_tiles": [1],
        "test_tiles": [1],
        "weak_tiles": [1],
    }  # the one sample tile
    args: dict = {"num_classes": 5, **tiles, **BASE, **kwargs}
    return VaihingenDataModule(root=shared_data / "vaihingen_sample", **args)


def _area1(shared_data: Path) -> np.ndarray:
    """Expected ids of area 1 from the independently converted mmseg label crop (0 = ignore, k -> k-1)."""
    ann = np.array(
        Image.open(shared_data / "mmseg_real_samples/pseudo_vaihingen_dataset/ann_dir/area1_0_0_512_512.png")
    )
    return np.where(ann == 0, 255, ann.astype(np.int64) - 1)


def test_vaihingen_colour_decoding_and_eval_tiling(shared_data: Path) -> None:
    expected = _area1(shared_data)
    ds = _vaihingen(shared_data, tile_size=200).dataset("val", transform=None)
    image, mask = ds.tile(1)
    np.testing.assert_array_equal(mask, expected)
    assert ds.ids[:3] == ["area1_0_0", "area1_0_200", "area1_0_400"] and len(ds) == 9  # 3 x 3 windows
    stitched = np.full((600, 600), 255, np.int64)
    for k in range(len(ds)):
        _, top, left = ds.windows[k]
        window = ds.load(k)
        stitched[top : top + 200, left : left + 200] = window["mask"]
        if top == 0 and left == 0:
            np.testing.assert_array_equal(window["image"], image[:200, :200])
    np.testing.assert_array_equal(stitched[:512, :512], expected)  # every pixel served exactly once
    assert (stitched[512:] == 255).all() and (stitched[:, 512:] == 255).all()  # borders padded with ignore


def test_vaihingen_random_and_weak_crops(shared_data: Path) -> None:
    expected = _area1(shared_data)
    dm = _vaihingen(shared_data, crop_size=128, crops_per_tile=3, train_transform=TrainTransform(64))
    train = dm.dataset("train", transform=None)
    assert len(train) == 3
    torch.manual_seed(0)
    first = train.load(0)
    torch.manual_seed(0)
    np.testing.assert_array_equal(train.load(0)["mask"], first["mask"])
    assert first["mask"].shape == (128, 128) and set(np.unique(first["mask"])) <= {0, 1, 2, 3, 4, 255}
    weak = _vaihingen(shared_data, crop_size=512, train_set="n2").dataset("train", transform=None).load(0)
    assert (weak["mask"] == 255).all()  # crop-level labels only
    present = np.unique(expected[expected != 255])
    np.testing.assert_array_equal(np.flatnonzero(weak["labels"]), present)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64)


def test_vaihingen_split_and_errors(shared_data: Path) -> None:
    split = seed_split()
    # the seed's 3 N1, 23 N2 and 7 test tiles; 3 val tiles then leave N2
    assert [len(split[k]) for k in ("n1", "n2", "val", "test")] == [3, 20, 3, 7]
    assert sorted(sum(split.values(), [])) == sorted(AREAS) and seed_split() == split
    one = seed_split(n_val=1)  # val is drawn after the seed's draws: N1, test and N2 + val are the seed's
    assert one["test"] == split["test"] and one["n1"] == split["n1"] and len(one["val"]) == 1
    assert sorted(one["n2"] + one["val"]) == sorted(split["n2"] + split["val"])
    assert seed_split(1) != split
    dm = VaihingenDataModule(root=shared_data / "vaihingen_sample", num_classes=5, **BASE)
    missing = next(a for a in split["test"] if a != 1)
    with pytest.raises(FileNotFoundError, match=rf"area{missing}.tif.*test_tiles"):
        dm.dataset("test")
    colours = np.array([[[255, 0, 0], [0, 0, 0], [9, 9, 9]]], np.uint8)
    ids = np.array([0, 1, 2, 3, 4, 5, 255], np.uint8)
    np.testing.assert_array_equal(decode_colours(colours[:, :2], COLOURS, ids, Path("x.tif")), [[5, 255]])
    with pytest.raises(ValueError, match=r"x.tif: unknown colour\(s\) \[\[9, 9, 9\]\]"):
        decode_colours(colours, COLOURS, ids, Path("x.tif"))
    assert _vaihingen(shared_data, ignore_clutter=False, num_classes=6).num_classes == 6
    with pytest.raises(ValueError, match="num_classes=5 but the dataset has 6"):
        _vaihingen(shared_data, ignore_clutter=False)
    assert tifffile.imread(shared_data / "vaihingen_sample/top/top_mosaic_09cm_area1.tif").shape == (
        512,
        512,
        3,
    )
