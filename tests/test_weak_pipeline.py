"""The weak-supervision chain through the real configs: classifier -> cam_saliency prior -> DeepLab,
online pseudo labels for crop-labelled samples (Vaihingen task ii), single-stage refined masks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor, nn

from usgs.methods.single_stage import RefinedMasks, SingleStage
from usgs.nets.single_stage_net import SingleStageNet
from usgs.priors.cam_saliency import OnlinePseudoLabeler, image_labels
from usgs.run.train import train

torch.set_num_threads(1)
TINY = ["data.image_size=32", "data.num_train=8", "data.num_val=4", "data.num_test=4", "data.batch_size=4"]


def test_weak_deeplab_is_one_command_classifier_to_pseudo_labels_to_deeplab(
        make_cfg: Callable[..., DictConfig], tmp_path: Path, caplog) -> None:
    """train.py experiment=weak_deeplab with no prior cache and no checkpoint: prior_auto trains the
    classifier (the prior's train_command) on the run's data, makes the cam_saliency pseudo labels
    with its checkpoint, then trains DeepLab on them."""
    weak_cfg = make_cfg(["experiment=weak_deeplab", *TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                         "trainer.limit_val_batches=1", "test=false", "callbacks.prediction_overlays=null",
                         "model.net.head_channels=16"])
    weak_cfg.prior_model_overrides = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "logger=csv",
                                      "callbacks.prediction_overlays=null", "model.pos_weight=null"]
    with caplog.at_level("INFO"):
        assert train(weak_cfg) is not None
    assert "python make_priors.py prior=cam_saliency split=train data=shapes" in caplog.text
    classifier = tmp_path / "prior_model"
    assert "usgs.methods.classifier" in (classifier / "config.yaml").read_text()
    report = json.loads((tmp_path / "priors" / "train" / "report.json").read_text())
    assert report["images"] == 8 and 0.0 <= report["coverage"] <= 1.0
    # pseudo labels are class ids: scored as they are too, never above the best one-to-one matching
    assert 0.0 <= report["miou_identity"] <= report["miou_hungarian_iou"] + 1e-9
    datamodule = instantiate(weak_cfg.data, prior=None)
    dataset = datamodule.dataset("train", transform=None)
    folder = tmp_path / "priors" / "shapes" / "train" / report["folder"]
    for i, name in enumerate(dataset.ids):
        pseudo = np.asarray(Image.open(folder / f"{name}.png"))
        present = set(image_labels(dataset.load(i), 7).tolist()) | {255}
        assert set(np.unique(pseudo).tolist()) <= present  # only the image's own classes, or ignore
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


class _FixedAttention:
    """Attention source returning preset maps (class 1 on the left half, class 2 on the right)."""

    def __init__(self) -> None:
        self.model = nn.Linear(1, 1)

    def __call__(self, image: Tensor, labels: Tensor) -> Tensor:
        maps = torch.zeros(*labels.shape, *image.shape[-2:])
        maps[:, 1, :, :8] = 0.9
        maps[:, 2, :, 8:] = 0.3  # below the 0.4 threshold
        return maps * labels[:, :, None, None]


def _trained(tmp_path: Path) -> str:
    """A checkpoint file for :class:`_FixedAttention`'s model (its maps do not depend on it)."""
    path = tmp_path / "attention.ckpt"
    torch.save({"state_dict": nn.Linear(1, 1).state_dict()}, path)
    return str(path)


def test_online_pseudo_labeler_without_checkpoint_is_an_error(make_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(ValueError, match="needs a trained attention model"):
        OnlinePseudoLabeler(_FixedAttention(), checkpoint=None)
    cfg = make_cfg(["experiment=vaihingen_task2", "model.pseudo_labeler.checkpoint=null"])
    node = OmegaConf.to_container(cfg.model, resolve=True)
    node["net"] = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 6, "kernel_size": 1}
    with pytest.raises(Exception, match="needs a trained attention model"):  # not a random classifier
        instantiate(node, _convert_="all")


def test_online_pseudo_labels_only_for_crop_labelled_samples(make_cfg: Callable[..., DictConfig],
                                                             tmp_path: Path) -> None:
    labeler = OnlinePseudoLabeler(_FixedAttention(), checkpoint=_trained(tmp_path))
    image = torch.zeros(2, 3, 16, 16)
    labels = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    pseudo = labeler(image, labels)
    assert (pseudo[0, :, :8] == 1).all() and (pseudo[0, :, 8:] == 255).all()
    assert (pseudo[1] == 255).all()  # class 1 absent from sample 1's labels

    cfg = make_cfg(["experiment=vaihingen_task2", "model.pseudo_labeler.checkpoint=null"])
    node = OmegaConf.to_container(cfg.model, resolve=True)
    node["net"] = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 5, "kernel_size": 1}
    node["pseudo_labeler"] = None
    model = instantiate(node, _convert_="all")
    model.pseudo_labeler = OnlinePseudoLabeler(_FixedAttention(), checkpoint=_trained(tmp_path))
    mask = torch.full((2, 16, 16), 255, dtype=torch.long)
    mask[0] = 3  # an N1 crop with pixel labels, then an N2 crop with crop-level labels only
    batch = {"image": image, "mask": mask, "index": torch.arange(2),
             "labels": torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]])}
    target = model.target(batch)
    assert (target[0] == 3).all()
    assert (target[1, :, :8] == 1).all() and (target[1, :, 8:] == 255).all()


def test_refined_masks_keep_only_present_classes() -> None:
    torch.manual_seed(0)
    model = SingleStage(SingleStageNet(num_classes=4, backbone="resnet18", channels=16), num_classes=4,
                        pamr_iters=2)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    masks = RefinedMasks(model)(torch.randn(1, 3, 32, 32), labels)
    assert masks.shape == (1, 4, 32, 32)
    assert (masks[:, [1, 3]] == 0).all() and (masks >= 0).all()
    assert (masks.sum(1) <= 1 + 1e-5).all()
