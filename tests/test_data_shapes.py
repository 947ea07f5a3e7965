"""Synthetic shapes, the base Dataset/DataModule contract and the prior cache lookup."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from usgs.data.base import SegmentationDataset
from usgs.data.prior_store import find_prior_dir, prior_dir_name
from usgs.data.shapes import CLASS_NAMES, NUM_STUFF, ShapesDataModule, ShapesDataset
from usgs.data.transforms import EvalTransform, TrainTransform

C = len(CLASS_NAMES)


def _module(**kwargs: object) -> ShapesDataModule:
    args: dict = dict(num_classes=C, num_train=20, num_val=6, num_test=5, batch_size=4)
    args.update(kwargs)
    return ShapesDataModule(**args)


def test_same_seed_same_arrays_other_seed_or_split_differs() -> None:
    a, b = ShapesDataset("train", 4, seed=3), ShapesDataset("train", 4, seed=3)
    for i in range(4):
        for key, value in a.load(i).items():
            np.testing.assert_array_equal(value, b.load(i)[key])
    other_seed = ShapesDataset("train", 4, seed=4).load(0)["image"]
    other_split = ShapesDataset("val", 4, seed=3).load(0)["image"]
    assert not np.array_equal(a.load(0)["image"], other_seed)
    assert not np.array_equal(a.load(0)["image"], other_split)
    assert not np.array_equal(a.load(0)["image"], a.load(1)["image"])


def test_raw_sample_contract() -> None:
    ds = ShapesDataset("test", 8, image_size=48)
    for i in range(8):
        raw = ds.load(i)
        assert raw["image"].dtype == np.uint8 and raw["image"].shape == (48, 48, 3)
        assert raw["mask"].dtype == np.uint8 and raw["mask"].shape == (48, 48)
        assert raw["mask"].max() < C
        assert "saliency" not in raw  # no input computed from the mask (tests/test_no_label_inputs.py)
        # every image has an object and some stuff
        assert 0 < ShapesDataset.foreground(raw["mask"]).sum() < 48 * 48
    oracle = ShapesDataset("test", 2, image_size=48, oracle_saliency=True).load(1)  # the named oracle
    np.testing.assert_array_equal(oracle["saliency"] == 1, oracle["mask"] >= NUM_STUFF)


def test_batch_contract_from_dataloader() -> None:
    dm = _module()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 3, 64, 64)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (4, 64, 64)
    assert "saliency" not in batch
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (4, C)
    assert batch["index"].dtype == torch.int64 and len(batch["name"]) == 4
    for b in range(4):  # labels = classes present in the (cropped) mask
        present = batch["mask"][b].unique()
        expected = torch.zeros(C)
        expected[present[present != 255]] = 1
        torch.testing.assert_close(batch["labels"][b], expected)
    assert len(dm.train_dataloader()) == 5  # 20 // 4, drop_last
    assert len(dm.val_dataloader().dataset) == 6 and len(dm.test_dataloader().dataset) == 5


def test_train_order_is_seeded_and_val_is_not_shuffled() -> None:
    def order(seed: int) -> list[int]:
        dm = _module(seed=seed)
        return torch.cat([b["index"] for b in dm.train_dataloader()]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)
    dm = _module()
    assert torch.cat([b["index"] for b in dm.val_dataloader()]).tolist() == list(range(6))


def test_augmented_batches_are_reproducible_with_workers() -> None:
    """Augmentation seeds come from torch's RNG, which each worker gets from the seeded loader."""

    def first_batch() -> dict:
        return next(
            iter(
                _module(
                    num_workers=1, train_transform=TrainTransform(48, scale=(0.5, 2.0))
                ).train_dataloader()
            )
        )

    a, b = first_batch(), first_batch()
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["image"].shape == (4, 3, 48, 48)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="num_classes=5"):
        _module(num_classes=5)
    with pytest.raises(ValueError, match="valid: \\['train', 'val', 'test'\\]"):
        _module().dataset("training")
    with pytest.raises(ValueError, match="prior_root"):
        _module(prior="kmeans")


def test_colour_kmeans_does_not_solve_shapes() -> None:
    """Colours are independent of the class: RGB k-means + Hungarian matching stays near chance."""
    ds = ShapesDataset("val", 24)
    samples = [ds.load(i) for i in range(24)]
    pixels = np.concatenate([s["image"].reshape(-1, 3) for s in samples]).astype(np.float32)
    target = np.concatenate([s["mask"].ravel() for s in samples])
    clusters = KMeans(C, n_init=1, random_state=0).fit(pixels[::4]).predict(pixels)
    confusion = np.zeros((C, C))
    np.add.at(confusion, (clusters, target), 1)
    rows, cols = linear_sum_assignment(-confusion)
    accuracy = confusion[rows, cols].sum() / confusion.sum()
    assert accuracy < 0.5, accuracy


class _BadLabels(SegmentationDataset):
    def __init__(self) -> None:
        super().__init__(num_classes=3)
        self.ids = ["bad_one"]

    def load(self, index: int) -> dict[str, np.ndarray]:
        mask = np.array([[0, 1], [9, 255]], dtype=np.uint8)
        return {"image": np.zeros((2, 2, 3), np.uint8), "mask": mask}


class _BadSaliency(_BadLabels):
    def load(self, index: int) -> dict[str, np.ndarray]:
        saliency = np.array([[0, 1], [128, 255]], dtype=np.uint8)
        return {
            "image": np.zeros((2, 2, 3), np.uint8),
            "mask": np.zeros((2, 2), np.uint8),
            "saliency": saliency,
        }


def test_out_of_range_label_names_sample_and_value() -> None:
    with pytest.raises(ValueError, match=r"'bad_one'.*\[9\]"):
        _BadLabels()[0]
    with pytest.raises(ValueError, match=r"'bad_one': saliency value\(s\) \[128\]"):
        _BadSaliency()[0]


def _write_prior_cache(root: Path, folder: str, ids: list[str], size: int, finished: bool = True) -> Path:
    prior_dir = root / "shapes" / "train" / folder
    prior_dir.mkdir(parents=True)
    for k, name in enumerate(ids):
        values = (np.arange(size * size).reshape(size, size) + k) % 5
        Image.fromarray(values.astype(np.uint8)).save(prior_dir / f"{name}.png")
    if finished:
        (prior_dir / "manifest.json").write_text(json.dumps({"ids": ids}))
    return prior_dir


def test_prior_is_loaded_from_the_cache(tmp_path: Path) -> None:
    ids = [f"train_{i:05d}" for i in range(20)]
    _write_prior_cache(tmp_path, prior_dir_name("kmeans", "abc123"), ids, 64)
    dm = _module(prior="kmeans", prior_root=tmp_path, train_transform=EvalTransform(None))
    sample = dm.dataset("train")[3]
    expected = (np.arange(64 * 64).reshape(64, 64) + 3) % 5
    assert sample["prior"].dtype == torch.int64
    np.testing.assert_array_equal(sample["prior"].numpy(), expected)
    assert "prior" not in dm.dataset("val")[0]  # prior_splits defaults to train only
    batch = next(iter(dm.train_dataloader()))
    assert batch["prior"].shape == (4, 64, 64)


def test_prior_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="python make_priors.py prior=kmeans data=shapes"):
        find_prior_dir(tmp_path, "shapes", "train", "kmeans")
    _write_prior_cache(tmp_path, "kmeans-aaa", ["train_00000"], 32, finished=False)
    with pytest.raises(FileNotFoundError, match="unfinished"):
        find_prior_dir(tmp_path, "shapes", "train", "kmeans")
    (tmp_path / "shapes" / "train" / "kmeans-aaa" / "manifest.json").write_text("{}")
    _write_prior_cache(tmp_path, "kmeans-bbb", ["train_00000"], 64)
    with pytest.raises(ValueError, match="kmeans-aaa, kmeans-bbb"):
        find_prior_dir(tmp_path, "shapes", "train", "kmeans")
    assert find_prior_dir(tmp_path, "shapes", "train", "kmeans-bbb").name == "kmeans-bbb"
    dm = _module(prior="kmeans-aaa", prior_root=tmp_path)
    with pytest.raises(ValueError, match=r"kmeans-aaa/train_00000.png has size \(32, 32\)"):
        dm.dataset("train")[0]
    with pytest.raises(FileNotFoundError, match="train_00001.png"):
        dm.dataset("train")[1]
    with pytest.raises(ValueError, match="letters"):
        prior_dir_name("k-means", "abc")


def test_yaml_instantiates(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg(["data=shapes"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, ShapesDataModule) and dm.num_classes == cfg.data.num_classes == C
    assert dm.seed == cfg.seed  # shuffle follows the run's seed; the images follow data_seed
    image = dm.dataset("train")[0]["image"]
    assert image.shape == (3, cfg.data.image_size, cfg.data.image_size)


def test_tensors_added_by_a_transform_reach_the_batch() -> None:
    def two_views(raw: dict) -> dict:
        out = dict(raw)
        out["image2"] = torch.full((3, 4, 4), 7.0)
        out["not_a_tensor"] = "dropped"
        return out

    sample = _module().dataset("train", transform=two_views)[0]
    assert torch.equal(sample["image2"], torch.full((3, 4, 4), 7.0))
    assert "not_a_tensor" not in sample and sample["mask"].dtype == torch.int64


def test_train_sampler_hook_draws_rare_class_samples_more_often() -> None:
    from functools import partial

    from usgs.data.sampling import rare_class_sampler

    cross = CLASS_NAMES.index("cross")
    module = _module(num_train=60, train_sampler=partial(rare_class_sampler, rare_classes=[cross], factor=20.0,
                                                         seed=3))
    loader = module.train_dataloader()
    dataset = module.dataset("train", transform=None)
    drawn = [index for index, _seed in loader.sampler]  # (index, augmentation seed) pairs
    has_cross = [bool((dataset.load(i)["mask"] == cross).any()) for i in range(len(dataset))]
    base_rate = sum(has_cross) / len(has_cross)
    drawn_rate = sum(has_cross[i] for i in drawn) / len(drawn)
    assert 0 < base_rate < 0.8 and drawn_rate > base_rate + 0.1
    assert drawn == [i for i, _ in module.train_dataloader().sampler]  # a fresh loader draws the same (seeded)
