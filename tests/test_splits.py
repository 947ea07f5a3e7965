"""Three disjoint splits for every DataModule: train / val (chooses) / test (reported), no id shared.

Every conf/data/*.yaml is composed through the real Hydra config and its splits are listed with
``split_ids``; the real subsets in ../shared/data are used where they exist (skipped otherwise),
Cityscapes and the folder layouts are written by the test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from usgs.data.base import SegmentationDataModule
from usgs.data.folder import FolderDataModule
from usgs.data.splits import SPLITS, holdout_split, overlapping_ids

FOLDER_ARGS = {"class_names": ["a", "b"], "num_classes": 2, "batch_size": 2, "num_workers": 0}


def _splits(dm: SegmentationDataModule) -> dict[str, list[str]]:
    ids = {split: dm.split_ids(split) for split in SPLITS}
    assert all(ids.values()), {k: len(v) for k, v in ids.items()}  # no empty split
    assert overlapping_ids(ids) == {}
    return ids


def test_holdout_split_is_a_seeded_partition() -> None:
    ids = [f"{i:03d}" for i in range(100)]
    parts = {s: holdout_split(ids, s, 0.2, seed=3, test_fraction=0.1) for s in SPLITS}
    assert [len(parts[s]) for s in SPLITS] == [70, 20, 10] and sorted(sum(parts.values(), [])) == ids
    # test does not move when val_fraction changes: re-tuning val never touches the reported split
    assert holdout_split(ids, "test", 0.3, seed=3, test_fraction=0.1) == parts["test"]
    assert holdout_split(ids, "test", 0.2, seed=4, test_fraction=0.1) != parts["test"]
    carved = {s: holdout_split(ids, s, 0.2, seed=3) for s in ("train", "val")}
    assert len(carved["val"]) == 20 and sorted(carved["train"] + carved["val"]) == ids
    with pytest.raises(ValueError, match="no test part"):
        holdout_split(ids, "test", 0.2, seed=3)
    assert [len(holdout_split(ids[:3], s, 0.3, seed=0, test_fraction=0.3)) for s in SPLITS] == [1, 1, 1]
    with pytest.raises(ValueError, match="2 sample"):  # never an empty split
        holdout_split(ids[:2], "train", 0.3, seed=0, test_fraction=0.3)


@pytest.mark.parametrize("name", ["shapes", "objects"])
def test_generated_splits_are_disjoint_images(make_cfg: Callable, name: str) -> None:
    cfg = make_cfg([f"data={name}", "data.num_train=24", "data.num_val=8", "data.num_test=8"])
    dm = instantiate(cfg.data)
    _splits(dm)
    pixels = {s: {dm.dataset(s, None).load(i)["image"].tobytes() for i in range(8)} for s in SPLITS}
    assert overlapping_ids(pixels) == {}  # different pictures, not only different names


@pytest.mark.parametrize(
    ("name", "sizes"),
    [("stanford", [429, 143, 143]), ("weizmann", [196, 66, 66]), ("intel", [720, 180, 300])],
)
def test_real_data_splits_are_disjoint(
    name: str, sizes: list[int], shared_data: Path, make_cfg: Callable
) -> None:
    dm = instantiate(make_cfg([f"data={name}", f"paths.data_dir={shared_data}"]).data)
    ids = _splits(dm)
    assert [len(ids[s]) for s in SPLITS] == sizes


def test_voc_val_is_carved_from_train_and_test_is_official_val(shared_data: Path, make_cfg: Callable) -> None:
    overrides = [f"paths.data_dir={shared_data}", "data=voc", "data.missing=skip"]
    dm = instantiate(make_cfg([*overrides, "data.list_dir=ImageSets/Segmentation/official_full"]).data)
    listed = {s: dm._listed(s)[0] for s in SPLITS}  # the full official lists, before the file check
    assert [len(listed[s]) for s in SPLITS] == [10582 - 146, 146, 1449] and overlapping_ids(listed) == {}
    _splits(instantiate(make_cfg([*overrides, "data.train_list=train"]).data))  # the 4 files on disk


def _write(path: Path, size: tuple[int, int] = (4, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros(size, np.uint8)).save(path)


@pytest.mark.parametrize("config", ["cityscapes", "cityscapes27"])
def test_cityscapes_val_is_carved_from_train(config: str, tmp_path: Path, make_cfg: Callable) -> None:
    for folder, count in (("train", 10), ("val", 3)):
        for k in range(count):
            stem = f"{folder}/aachen/aachen_{k:06d}_000019"
            _write(tmp_path / "leftImg8bit" / f"{stem}_leftImg8bit.png")
            _write(tmp_path / "gtFine" / f"{stem}_gtFine_labelIds.png")
    dm = instantiate(make_cfg([f"data={config}", f"data.root={tmp_path}"]).data)
    ids = _splits(dm)
    assert [len(ids[s]) for s in SPLITS] == [9, 1, 3] and all(i.startswith("val/") for i in ids["test"])


def test_vaihingen_test_tiles_are_the_seeds_and_val_comes_out_of_n2(make_cfg: Callable) -> None:
    dm = instantiate(make_cfg(["data=vaihingen"]).data)
    ids = _splits(dm)  # tiles are listed from the seeded split: no files needed
    assert [len(ids[s]) for s in SPLITS] == [23, 3, 7] and len(sum(ids.values(), [])) == 33


@pytest.mark.parametrize(
    ("folders", "sizes"),
    [((), [6, 2, 2]), (("train", "val"), [8, 2, 3]), (("train", "test"), [8, 2, 3]),
     (("train", "val", "test"), [10, 3, 3])],
)  # fmt: skip
def test_folder_splits_are_disjoint(folders: tuple[str, ...], sizes: list[int], tmp_path: Path) -> None:
    counts = {"train": 10, "val": 3, "test": 3}
    for folder in folders or ("",):
        for k in range(counts.get(folder, 10)):
            for sub in ("images", "masks"):
                _write(tmp_path / sub / folder / f"{k}.png")  # same names in every sub-folder
    dm = FolderDataModule(root=tmp_path, **FOLDER_ARGS)
    ids = _splits(dm)
    assert [len(ids[s]) for s in SPLITS] == sizes
    if len(folders) == 2:  # the one held-out folder is the reported test split; val comes from train/
        assert all(i.startswith(f"{folders[1]}/") for i in ids["test"])
        assert all(i.startswith("train/") for i in ids["val"])


def test_overlapping_overrides_are_reported(make_cfg: Callable, caplog: pytest.LogCaptureFixture) -> None:
    tiles = ["data.train_tiles=[2]", "data.weak_tiles=[3]", "data.val_tiles=[1]"]
    with caplog.at_level(logging.WARNING):
        instantiate(make_cfg(["data=vaihingen", *tiles, "data.test_tiles=[4]"]).data).check_splits(SPLITS)
        assert "share" not in caplog.text
        # one sample tile for val and test (as the smoke tests do): allowed, but never silently
        instantiate(make_cfg(["data=vaihingen", *tiles, "data.test_tiles=[1]"]).data).check_splits(SPLITS)
    assert "splits val and test share 1 id(s) (area1): scores on test are not held out" in caplog.text
