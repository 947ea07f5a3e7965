"""Every conf/experiment/*.yaml composes and runs with fast_dev_run on the synthetic data.

Experiments that train on a cached prior get it computed first by train's prior_auto (the real
make_priors, same data config); a prior made by a model (cam_saliency) gets that model trained first
on the run's own data, one batch per split (``prior_model_overrides=["debug=fdr"]``), on a few images.
No experiment is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import EXPERIMENTS, ROOT, compose_config
from usgs.run.train import train

# A prior made by a trained model: that model one batch per split, and the prior of a few images.
CHAINED = ['prior_model_overrides=["debug=fdr"]', "data.num_train=8", "data.num_val=4", "data.num_test=4"]
FAST = ["data=shapes", "data.image_size=32", "data.batch_size=4", "data.eval_batch_size=4",
        "trainer.fast_dev_run=true", "logger=csv"]
# Vaihingen experiments set the Vaihingen DataModule's tile splits, which the synthetic data has
# not: they run on the real sample tile (area 1, 512 x 512) at test sizes instead.
VAIHINGEN_SAMPLE = ["data.train_tiles=[1]", "data.weak_tiles=[1]", "data.val_tiles=[1]", "data.test_tiles=[1]", "data.crop_size=64",
                    "data.train_transform.crop_size=64", "data.crops_per_tile=4", "data.tile_size=128",
                    "data.batch_size=2", "data.eval_batch_size=2", "data.num_workers=0",
                    "data.persistent_workers=false", "logger=csv",
                    "data.train_gt=eroded"]  # the sample has no full (non-eroded) ground truth
# Experiments that need a checkpoint of another one: (experiment to train first, key to point at it).
PREREQUISITES = {"vaihingen_task2": ("vaihingen_classifier", "model.pseudo_labeler.checkpoint")}


def _overrides(experiment: str, tmp_path: Path) -> list[str]:
    from tests.conftest import SHARED_DATA

    plain = compose_config("train", [f"experiment={experiment}", "model.pseudo_labeler.checkpoint=null"]
                           if experiment in PREREQUISITES else [f"experiment={experiment}"], tmp_path)
    if "vaihingen" not in plain.data._target_:
        return FAST
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{experiment} runs on the real Vaihingen sample, absent at {SHARED_DATA}")
    window = ["model.sliding_window=[64,48]"] if "sliding_window" in plain.model else []
    return [f"data.root={SHARED_DATA / 'vaihingen_sample'}", *VAIHINGEN_SAMPLE, *window]


def _train_prerequisite(experiment: str, tmp_path: Path) -> list[str]:
    if experiment not in PREREQUISITES:
        return []
    first, key = PREREQUISITES[experiment]
    run_dir = tmp_path / first
    cfg = compose_config("train", [f"experiment={first}", *_overrides(first, run_dir), "trainer.max_epochs=1",
                                   "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"],
                         run_dir)
    train(cfg)
    return [f"{key}={run_dir / 'checkpoints' / 'last.ckpt'}"]


def _prior_needs_checkpoint(prior: str) -> bool:
    node = OmegaConf.load(ROOT / "conf" / "prior" / f"{prior.split('-')[0]}.yaml")
    return "checkpoint" in node


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fast_dev_run(experiment: str, tmp_path: Path) -> None:
    overrides = [*_overrides(experiment, tmp_path), *_train_prerequisite(experiment, tmp_path)]
    cfg = compose_config("train", [f"experiment={experiment}", *overrides, "trainer.fast_dev_run=true"], tmp_path)
    # Papers' ResNet-50/101 defaults are built by the nets tests; here a ResNet-18 keeps 2 cores fast.
    if OmegaConf.select(cfg, "model.net.backbone") in ("resnet50", "resnet101"):
        cfg.model.net.backbone = "resnet18"
    if cfg.model._target_ == "usgs.methods.stego.Stego":  # frozen-feature recipes: DINO files are not here
        if OmegaConf.is_missing(cfg.model.backbone, "weights"):
            cfg.model.backbone.name, cfg.model.backbone.weights = "resnet18", None
        cfg.model.res, cfg.model.max_train_images, cfg.model.crf_workers, cfg.model.num_neighbors = 32, 4, 0, 2
    assert cfg.get("tags"), f"experiment/{experiment}.yaml should set tags"
    prior = cfg.data.get("prior")
    if prior and _prior_needs_checkpoint(prior):
        cfg = compose_config("train", [f"experiment={experiment}", *overrides, "trainer.fast_dev_run=true",
                                       *CHAINED], tmp_path)
    train(cfg)  # a prior cache is computed first by prior_auto (usgs/run/prior_auto.py)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "train/loss" in metrics and "val/miou" in metrics
    assert metrics["train/loss"] is not None
