"""Vaihingen task (i) end to end on the one real sample tile: random training crops, the evaluation
grid of tiles, sliding-window prediction inside each tile and mIoU over the whole split."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from usgs.metrics import SegmentationMetric
from usgs.run.checkpoints import load_checkpoint
from usgs.run.train import train

torch.set_num_threads(1)


def sample_overrides(shared_data: Path) -> list[str]:
    """The sample holds area 1 only (512x512): train and evaluate on it, at CPU-test sizes."""
    return [
        f"data.root={shared_data / 'vaihingen_sample'}",
        "data.train_tiles=[1]",
        "data.weak_tiles=[]",
        "data.val_tiles=[1]", "data.test_tiles=[1]",
        "data.train_gt=eroded",  # the sample has no full (non-eroded) ground truth
        "data.crop_size=64",
        "data.train_transform.crop_size=64",
        "data.crops_per_tile=4",
        "data.tile_size=128",
        "data.batch_size=2",
        "data.eval_batch_size=4",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "model.sliding_window=[64,48]",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "callbacks.prediction_overlays=null",
        # Evaluation is what this test is about: no validation during fit (test uses last.ckpt).
        "trainer.limit_val_batches=0",
        "+trainer.num_sanity_val_steps=0",
        # The tiling path is model-agnostic: a small ResNet-18 DeepLab instead of the 29 M-parameter
        # EncDecUnpool (unit-tested in test_weak.py) keeps this test fast on 2 shared cores.
        "model/net=deeplabv3",
        "model.net.output_stride=32",
        "model.net.head_channels=16",
    ]


def test_task1_tiles_and_sliding_window_end_to_end(
    make_cfg: Callable[..., DictConfig], shared_data: Path, tmp_path: Path
) -> None:
    cfg = make_cfg(["experiment=vaihingen_task1", *sample_overrides(shared_data)])
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["test/miou"] <= 1.0

    # Recompute the test mIoU by hand over the whole split: 16 windows of 128 px cover the 512 px tile,
    # each predicted from 3 x 3 overlapping 64 px windows (starts 0, 48, 64) whose logits are averaged.
    _, model = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    datamodule = instantiate(cfg.data, _convert_="all")
    dataset = datamodule.dataset("val")
    assert len(dataset) == 16 and dataset[0]["image"].shape == (3, 128, 128)
    metric = SegmentationMetric(num_classes=6)  # the seed trains and predicts 6 classes (clutter too)
    model.eval()
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = dataset[i]
            logits = model.predict_full(sample["image"][None])
            assert logits.shape == (1, 6, 128, 128)
            metric.update(logits, sample["mask"][None])
    scores = metric.compute()
    assert abs(float(scores["miou"]) - metrics["test/miou"]) < 1e-4
    assert int(metric.confmat.sum()) > 0.5 * 512 * 512  # the eroded GT ignores only boundaries


def test_seed_trains_on_the_full_ground_truth_and_we_score_on_the_eroded_one(shared_data: Path) -> None:
    import pytest

    from usgs.data.vaihingen import VaihingenDataModule

    datamodule = VaihingenDataModule(root=str(shared_data / "vaihingen_sample"), gt="eroded", train_gt="full",
                                     ignore_clutter=False, num_classes=6, train_tiles=[1], weak_tiles=[], val_tiles=[1],
                                     crop_size=64, crops_per_tile=1, tile_size=128, num_workers=0)
    assert datamodule.dataset("val", transform=None).load(0)["mask"].shape == (128, 128)  # eroded GT
    with pytest.raises(FileNotFoundError, match="gts_for_participants"):  # full GT, absent from the sample
        datamodule.dataset("train", transform=None).load(0)
