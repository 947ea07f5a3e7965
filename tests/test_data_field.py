"""The field's 27-class protocols: COCO-Stuff-27 (written files), Cityscapes-27 and Potsdam(-3) (real samples)."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
from PIL import Image

from usgs.data.cocostuff import FINE_TO_COARSE, TEST_LIST, TRAIN_LIST, CocoStuff27DataModule
from usgs.data.io import read_index_png

CITY = "mmseg_real_samples/pseudo_cityscapes_dataset"
POTSDAM = "mmseg_real_samples/pseudo_potsdam_dataset"


def test_coco_fine_to_coarse_table() -> None:
    # per supercategory counts of the 182 fine ids (things 0..90, stuff 91..181)
    counts = np.bincount(FINE_TO_COARSE[:182], minlength=27)
    assert counts.sum() == 182 and (counts > 0).all()
    assert counts[9] == 1 and counts[11] == 8 and counts[18] == 7 and counts[23] == 2  # person, vehicle, wall, sky
    assert FINE_TO_COARSE[0] == 9 and FINE_TO_COARSE[156] == 23 and FINE_TO_COARSE[181] == 24  # wood -> solid
    assert FINE_TO_COARSE[182:].tolist() == [255] * 74


def _write_coco(root: Path, split_dir: str, ids: list[str], rng: np.random.Generator) -> None:
    for name in ids:
        for sub in ("images", "annotations"):
            (root / sub / split_dir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / "images" / split_dir / f"{name}.jpg")
        fine = rng.choice([0, 5, 91, 156, 181, 255], size=(24, 32)).astype(np.uint8)
        Image.fromarray(fine).save(root / "annotations" / split_dir / f"{name}.png")


def test_cocostuff27_layout_splits_and_labels(tmp_path: Path, make_cfg) -> None:
    rng = np.random.default_rng(0)
    train_ids, test_ids = [f"{i:012d}" for i in range(40)], [f"{i:012d}" for i in range(100, 104)]
    _write_coco(tmp_path, "train2017", train_ids + ["000000000999"], rng)  # 999 is not curated
    _write_coco(tmp_path, "val2017", test_ids, rng)
    for rel, ids in ((TRAIN_LIST, train_ids), (TEST_LIST, test_ids)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("\n".join(ids) + "\n")
    cfg = make_cfg(["data=cocostuff27", f"data.root={tmp_path}"])
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, CocoStuff27DataModule) and dm.num_classes == 27
    splits = {s: dm.split_ids(s) for s in ("train", "val", "test")}
    assert splits["test"] == [f"val2017/{i}" for i in test_ids]
    assert len(splits["val"]) == 2 and len(splits["train"]) == 38
    assert not set(splits["train"]) & set(splits["val"]) and "train2017/000000000999" not in splits["train"]
    raw = dm.dataset("test", transform=None).load(0)
    fine = read_index_png(tmp_path / "annotations/val2017" / f"{test_ids[0]}.png")
    assert np.array_equal(raw["mask"], FINE_TO_COARSE[fine]) and set(np.unique(raw["mask"])) <= {9, 11, 17, 23, 24, 255}
    item = dm.dataset("test")[0]  # the protocol's evaluation transform: short side 320, centre crop
    assert tuple(item["image"].shape) == (3, 320, 320) and tuple(item["mask"].shape) == (320, 320)


def test_cocostuff27_missing_files_say_what_to_fetch(tmp_path: Path) -> None:
    dm = CocoStuff27DataModule(root=tmp_path, num_classes=27)
    with pytest.raises(FileNotFoundError, match="lacks.*curated/train2017/Coco164kFull_Stuff_Coarse.txt.*stuffthingmaps"):
        dm.split_ids("train")


def test_cityscapes27_maps_label_ids_7_to_33(shared_data: Path, make_cfg) -> None:
    cfg = make_cfg(["data=cityscapes27", f"data.root={shared_data / CITY}"])
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.num_classes == 27 and dm.class_names[0] == "road" and dm.class_names[-1] == "bicycle"
    mask = dm.dataset("test", transform=None).load(0)["mask"]
    ids = read_index_png(next((shared_data / CITY / "gtFine/val").glob("*/*_gtFine_labelIds.png")))
    expected = np.where((ids >= 7) & (ids <= 33), ids.astype(np.int64) - 7, 255)
    assert np.array_equal(mask, expected) and (mask == 255).any() and (mask < 27).any()


@pytest.mark.parametrize(("config", "merge"), [("potsdam", None), ("potsdam3", [0, 1, 2, 2, 0, 1])])
def test_potsdam_real_tile(shared_data: Path, make_cfg, config: str, merge: list[int] | None) -> None:
    cfg = make_cfg([f"data={config}", f"data.root={shared_data / POTSDAM}", "data.split_dirs={train: '', test: ''}"])
    dm = hydra.utils.instantiate(cfg.data)
    raw = dm.dataset("test", transform=None).load(0)
    ann = read_index_png(next((shared_data / POTSDAM / "ann_dir").glob("*.png")))
    six = np.where(ann == 0, 255, ann.astype(np.int64) - 1)  # mmseg: 0 = eroded boundary
    expected = six if merge is None else np.where(six == 255, 255, np.array(merge + [0])[np.minimum(six, 6)])
    assert raw["image"].shape == (512, 512, 3) and np.array_equal(raw["mask"], expected)
    assert dm.num_classes == (6 if merge is None else 3) and len(np.unique(raw["mask"])) > 2


def test_potsdam_iic_layout_from_written_mat_files(tmp_path: Path) -> None:
    from scipy.io import savemat

    from usgs.data.potsdam import PotsdamDataModule

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "gt").mkdir()
    names = [f"tile_{i}" for i in range(12)]
    for name in names:
        savemat(tmp_path / "imgs" / f"{name}.mat", {"img": rng.random((8, 8, 4)).astype(np.float32)})  # RGB + IR
        savemat(tmp_path / "gt" / f"{name}.mat", {"gt": rng.choice([0, 1, 2, 3, 4, 5, 255], (8, 8)).astype(np.uint8)})
    (tmp_path / "labelled_train.txt").write_text("\n".join(names[:10]) + "\n")
    (tmp_path / "labelled_test.txt").write_text("\n".join(names[10:]) + "\n")
    dm = PotsdamDataModule(root=tmp_path, num_classes=3, merge3=True, layout="iic")
    splits = {s: dm.split_ids(s) for s in ("train", "val", "test")}
    assert splits["test"] == names[10:] and len(splits["val"]) == 1 and len(splits["train"]) == 9
    raw = dm.dataset("test", transform=None).load(0)
    from scipy.io import loadmat

    gt = loadmat(tmp_path / "gt" / f"{names[10]}.mat")["gt"]
    merged = np.array([0, 1, 2, 2, 0, 1] + [255] * 250, dtype=np.uint8)[gt]
    assert raw["image"].shape == (8, 8, 3) and raw["image"].dtype == np.uint8 and np.array_equal(raw["mask"], merged)
    with pytest.raises(FileNotFoundError, match="labelled_train.txt.*IIC Potsdam archive"):
        PotsdamDataModule(root=tmp_path / "imgs", num_classes=6, layout="iic").split_ids("train")
