"""Stanford, Intel, Weizmann and folder loaders (real files in ../shared/data, skipped when absent),
plus every conf/data/*.yaml composed through the real Hydra config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from usgs.data.base import SegmentationDataModule
from usgs.data.folder import FolderDataModule
from usgs.data.intel import CLASS_NAMES as INTEL_CLASSES
from usgs.data.intel import IntelDataModule
from usgs.data.stanford import StanfordDataModule, StanfordDataset, read_regions
from usgs.data.transforms import TrainTransform
from usgs.data.weizmann import WeizmannDataModule

BASE = {"batch_size": 2, "num_workers": 0}
STANFORD = "stanford_background/iccv09Data"
DATA_CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "data").glob("*.yaml"))


def test_stanford_split_regions_and_labels(shared_data: Path) -> None:
    dm = StanfordDataModule(root=shared_data / STANFORD, num_classes=8, **BASE)
    train, val = dm.dataset("train", transform=None), dm.dataset("val", transform=None)
    test = dm.dataset("test", transform=None)
    assert (len(train), len(val), len(test)) == (429, 143, 143)  # 60 / 20 / 20 of 715
    assert len(set(train.ids) | set(val.ids) | set(test.ids)) == 715  # disjoint, all images used
    assert (
        StanfordDataModule(root=shared_data / STANFORD, num_classes=8, **BASE).dataset("val").ids == val.ids
    )
    assert (
        StanfordDataModule(root=shared_data / STANFORD, num_classes=8, split_seed=1, **BASE)
        .dataset("val")
        .ids
        != val.ids
    )
    text = (shared_data / STANFORD / "labels" / f"{train.ids[0]}.regions.txt").read_text()
    expected = np.array([[int(v) for v in row.split()] for row in text.splitlines() if row.strip()])
    raw = train.load(0)
    np.testing.assert_array_equal(raw["mask"], np.where(expected < 0, 255, expected))
    assert raw["image"].shape[:2] == expected.shape
    unknown = next(i for i in range(len(train)) if (train.load(i)["mask"] == 255).any())
    assert (train.load(unknown)["mask"] == 255).any()  # -1 pixels became ignore
    sample = train[0]
    present = np.unique(expected[expected >= 0])
    np.testing.assert_array_equal(np.flatnonzero(sample["labels"].numpy()), present)


def test_stanford_errors(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels" / "a.regions.txt").write_text("0 1 -1\n2 3 4\n")
    dm = StanfordDataModule(root=tmp_path, num_classes=8, val_fraction=0.5, **BASE)
    with pytest.raises(ValueError, match=r"images/a.jpg is \(3, 4\).*labels/a.regions.txt is \(2, 3\)"):
        StanfordDataset(["a"], tmp_path).load(0)
    with pytest.raises(ValueError, match="1 sample"):
        dm.dataset("train")
    (tmp_path / "labels" / "a.regions.txt").write_text("0 1 9\n")
    with pytest.raises(ValueError, match=r"a.regions.txt: label value\(s\) \[9\] out of range"):
        read_regions(tmp_path / "labels" / "a.regions.txt")
    with pytest.raises(FileNotFoundError, match="nowhere does not exist; expected <root>/images"):
        StanfordDataModule(root=tmp_path / "nowhere", num_classes=8).dataset("train")


def test_intel_labels_and_prior_as_target(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "intel_image_classification"
    dm = IntelDataModule(root=root, num_classes=6, **BASE)
    train = dm.dataset("train", transform=None)
    # test = seg_test (300); val = a seeded 20% of seg_train (180 of 900)
    assert len(train) == 720 and len(dm.dataset("val", transform=None)) == 180
    assert len(dm.dataset("test", transform=None)) == 300
    sample = train[0]
    assert "mask" not in sample and sample["image"].shape == (3, 150, 150)
    assert INTEL_CLASSES[int(sample["labels"].argmax())] == train.ids[0].split("/")[0] == "buildings"
    assert sample["labels"].sum() == 1
    prior_dir = tmp_path / "intel" / "val" / "kmeans-0f"
    (prior_dir / "buildings").mkdir(parents=True)
    (prior_dir / "manifest.json").write_text(json.dumps({}))
    val_ids = dm.dataset("val", transform=None).ids
    prior = (np.arange(150 * 150).reshape(150, 150) % 7).astype(np.uint8)
    Image.fromarray(prior).save(prior_dir / f"{val_ids[0]}.png")
    with_prior = IntelDataModule(root=root, num_classes=6, prior="kmeans", prior_root=tmp_path, **BASE)
    target = with_prior.dataset("val", transform=None)[0]
    np.testing.assert_array_equal(target["mask"].numpy(), prior)
    np.testing.assert_array_equal(target["prior"].numpy(), prior)
    with pytest.raises(FileNotFoundError, match="python make_priors.py prior=kmeans data=intel"):
        with_prior.dataset("train")


def test_weizmann_resizes_images_to_masks(shared_data: Path) -> None:
    root = shared_data / "weizmann_horse/weizmann_horse_db"
    dm = WeizmannDataModule(root=root, num_classes=2, **BASE)
    splits = [dm.dataset(s, transform=None) for s in ("train", "val", "test")]
    assert [len(s) for s in splits] == [196, 66, 66] and dm.class_names == ("background", "horse")
    ds = next(s for s in splits if "horse002" in s.ids)
    raw = ds.load(ds.ids.index("horse002"))
    grey = np.array(Image.open(root / "figure_ground" / "horse002.jpg").convert("L"))
    assert raw["image"].shape == (212, 269, 3) and grey.shape == (212, 269)  # rgb/ is 250x197
    np.testing.assert_array_equal(raw["mask"], grey >= 128)
    np.testing.assert_array_equal(raw["saliency"], raw["mask"])
    assert 0.05 < raw["mask"].mean() < 0.95
    with pytest.raises(ValueError, match="fixes"):
        WeizmannDataModule(root=root, num_classes=2, mask_dir="masks")


def _folder(tmp_path: Path, by_split: bool) -> Path:
    rng = np.random.default_rng(0)
    for k in range(5):
        split = ("train/" if k < 3 else "val/") if by_split else ""
        for sub in ("images", "masks", "saliency"):
            (tmp_path / sub / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"{split}{k}.png"
        )
        mask = np.full((8, 10), k % 3, np.uint8)
        mask[0] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"{split}{k}.png")
        Image.fromarray(((mask == 2) * 255).astype(np.uint8)).save(tmp_path / "saliency" / f"{split}{k}.png")
    return tmp_path


def test_folder_splits_saliency_and_bad_labels(tmp_path: Path) -> None:
    args = dict(class_names=["a", "b", "c"], num_classes=3, saliency_dir="saliency", **BASE)
    dm = FolderDataModule(root=_folder(tmp_path / "split", True), train_transform=TrainTransform(8), **args)
    # train/ + val/ only: val/ is the reported test split, val is carved out of train/ (1 of 3)
    assert dm.dataset("test").ids == ["3", "4"] and len(dm.dataset("val").ids) == 1
    assert sorted(dm.dataset("train").ids + dm.dataset("val").ids) == ["0", "1", "2"]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "mask", "saliency", "labels", "index", "name"}
    assert torch.equal(batch["saliency"] == 1, batch["mask"] == 2)
    flat = FolderDataModule(root=_folder(tmp_path / "flat", False), val_fraction=0.4, **args)
    assert [len(flat.dataset(s)) for s in ("train", "val", "test")] == [2, 2, 1]
    too_few = FolderDataModule(
        root=tmp_path / "flat", **{**args, "class_names": ["a", "b"], "num_classes": 2}
    )
    ds = next(d for d in map(too_few.dataset, ("train", "val", "test")) if "2" in d.ids)
    bad = ds.ids.index("2")
    with pytest.raises(ValueError, match=rf"masks/{ds.ids[bad]}.png[^)]*\): label value\(s\) \[2\] out of range"):
        ds[bad]
    with pytest.raises(ValueError, match="num_classes=4"):
        FolderDataModule(root=tmp_path, **{**args, "num_classes": 4})


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_data_config_composes_and_instantiates(name: str, make_cfg: Callable) -> None:
    cfg = make_cfg([f"data={name}"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, SegmentationDataModule) and dm.num_classes == cfg.data.num_classes
    assert dm.palette.shape == (dm.num_classes, 3) and dm.palette.dtype == np.uint8
    for key in ("num_workers", "pin_memory", "persistent_workers", "prior", "prior_root"):
        assert key in cfg.data, key


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1, 255], [0, 1, 255]),  # label map: 1 = foreground, 255 = ignore (kept)
        ([0, 1], [0, 1]),
        ([0, 255], [0, 1]),  # released 0/255 map: 255 = foreground
        ([0, 40, 127, 128, 200], [0, 0, 0, 1, 1]),  # grey map: thresholded at 128
    ],
)
def test_saliency_values_read_as_they_mean(tmp_path: Path, values: list[int], expected: list[int]) -> None:
    from usgs.data.io import read_saliency

    Image.fromarray(np.array([values], np.uint8)).save(tmp_path / "s.png")
    image = np.zeros((1, len(values), 3), np.uint8)
    np.testing.assert_array_equal(read_saliency(tmp_path / "s.png", image, tmp_path / "i.png"), [expected])


def test_saliency_with_another_value_set_is_an_error(tmp_path: Path) -> None:
    from usgs.data.io import read_saliency

    Image.fromarray(np.array([[0, 2, 3]], np.uint8)).save(tmp_path / "s.png")  # a class-id mask
    with pytest.raises(ValueError, match=r"saliency file .*s.png: values \[0, 2, 3\]"):
        read_saliency(tmp_path / "s.png", np.zeros((1, 3, 3), np.uint8), tmp_path / "i.png")


def test_folder_input_errors_name_the_file(tmp_path: Path) -> None:
    args = dict(class_names=["a", "b", "c"], num_classes=3, **BASE)
    root = _folder(tmp_path / "d", True)
    (root / "images" / "train" / "1.png").write_bytes((root / "images" / "train" / "1.png").read_bytes()[:60])
    dm = FolderDataModule(root=root, **args)
    # train/ + val/ sub-folders: val/ is the test split and val is carved out of train/
    train = next(d for d in (dm.dataset(s, transform=None) for s in ("train", "val")) if "1" in d.ids)
    broken = train.ids.index("1")
    with pytest.raises(OSError, match=r"cannot decode image file .*images/train/1.png: OSError"):
        train[broken]
    from usgs.priors.cache import load_image

    with pytest.raises(RuntimeError, match=r"images/train/1.png: OSError"):  # what make_priors prints
        load_image(train, broken)
    (root / "masks" / "val" / "4.png").unlink()  # found when the split is set up, not at its batch
    with pytest.raises(FileNotFoundError, match=r"1 file\(s\) of this split are missing: .*masks/val/4.png"):
        dm.dataset("test")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "images" / "train" / "2.jpg")
    with pytest.raises(ValueError, match=r"two images with the stem '2': .*train/2.jpg and .*train/2.png"):
        dm.dataset("train")
