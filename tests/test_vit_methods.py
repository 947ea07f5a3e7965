"""Every method that takes a backbone takes a ViT: MaskContrast (DeepLab or light head), twins, the CAM
classifier, frozen-feature evaluation (k-means, linear probe) with features cached at patch resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from tests.conftest import ROOT, compose_config
from usgs.evaluation.features import FeatureSource
from usgs.methods.classifier import ImageClassifier
from usgs.methods.frozen_backbone import FrozenBackbone
from usgs.nets.vit import vit
from usgs.priors.cam import GradCAM
from usgs.run.train import train

FAST = ["logger=csv", "data.num_workers=0", "trainer.fast_dev_run=true", "data.image_size=32",
        "data.batch_size=4", "data.eval_batch_size=4"]


# Four training images, a few steps, no validation: what a network must do first is fit them.
FIT = ["logger=csv", "data.num_workers=0", "data.image_size=32", "data.num_train=4", "data.num_val=4",
       "data.num_test=4", "data.batch_size=4", "data.eval_batch_size=4", "trainer.max_epochs=25",
       "trainer.limit_val_batches=0", "+trainer.num_sanity_val_steps=0", "test=false",
       "callbacks.prediction_overlays=null"]


def _train_images(cfg) -> dict[str, torch.Tensor]:
    """The four training images (evaluation transform, no crop) with their inputs (prior / saliency)."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, _convert_="all")
    dataset = datamodule.dataset("train", transform=datamodule.eval_transform)
    return next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))


def _trained(cfg, tmp_path: Path):
    from usgs.run.checkpoints import load_checkpoint

    train(cfg)
    return load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")[1].eval()


@pytest.mark.parametrize("head", ["deeplabv3", "patch_head"])
def test_maskcontrast_on_a_vit_fits_four_images(tmp_path: Path, head: str) -> None:
    """MaskContrast on a ViT learns, in 25 steps, the saliency it is given on its four training images:
    its saliency head agrees with them well above the all-background (or all-foreground) guess."""
    cfg = compose_config("train", ["experiment=maskcontrast", *FIT, "model.optimizer.lr=0.1"], tmp_path)
    with open_dict(cfg):
        if head == "patch_head":  # the light head of conf/model/net/patch_head.yaml
            cfg.model.net = OmegaConf.merge(OmegaConf.load(ROOT / "conf/model/net/patch_head.yaml"),
                                            {"num_classes": 32, "hidden": 64})
        cfg.model.net.backbone = "vit_small_patch16"
        cfg.model.net.aspp_rates = [1, 2, 3] if head == "deeplabv3" else None
        if head == "patch_head":
            del cfg.model.net.aspp_rates
    module = _trained(cfg, tmp_path)
    batch = _train_images(cfg)
    with torch.no_grad():
        predicted = module.embed(batch["image"])[1] > 0
    target, labelled = batch["prior"] == 1, batch["prior"] != 255
    guess = max(target[labelled].float().mean(), 1 - target[labelled].float().mean())
    accuracy = (predicted == target)[labelled].float().mean()
    assert accuracy > min(guess + 0.1, 0.95), (float(accuracy), float(guess))


def test_twins_on_a_vit_fit_four_images(tmp_path: Path) -> None:
    """The twin student on a ViT fits, in 25 steps, the prior it learns from on its four training images,
    well above the guess of its most frequent cluster."""
    overrides = ["experiment=twins", *FIT, "model.net.backbone=vit_small_patch16", "model.net.aspp_rates=[1,2,3]",
                 "model.optimizer.lr=0.003"]
    cfg = compose_config("train", overrides, tmp_path)
    module = _trained(cfg, tmp_path)
    batch = _train_images(cfg)
    with torch.no_grad():
        predicted = module.predict(batch["image"]).argmax(1)
    target = batch["prior"]
    labelled = target != 255
    guess = torch.bincount(target[labelled]).max() / labelled.sum()
    accuracy = (predicted == target)[labelled].float().mean()
    assert accuracy > guess + 0.2, (float(accuracy), float(guess))


def test_cam_classifier_on_vit_patch_features() -> None:
    model = ImageClassifier(vit("vit_small_patch16"), num_classes=3, pos_weight=None, feature_key="features",
                            cam_layer="backbone.feature_map")
    image, labels = torch.randn(2, 3, 48, 64), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    assert model(image).shape == (2, 3)
    cams = GradCAM(model, model.cam_layer)(image, labels)
    assert cams.shape == (2, 3, 48, 64) and cams.min() >= 0 and cams.max() <= 1
    assert (cams[labels == 0] == 0).all()


def test_frozen_features_cached_at_patch_resolution_and_flip_is_equivariant() -> None:
    net = FrozenBackbone(vit("vit_small_patch16"))
    image = torch.randn(2, 3, 32, 48)
    assert net.embed(image)[0].shape == (2, 384, 2, 3)
    batch = {"image": image, "mask": torch.zeros(2, 32, 48, dtype=torch.long)}
    source = FeatureSource(net, [batch], torch.device("cpu"))
    first = [out.features for _, out in source]
    assert first[0].shape == (2, 384, 32, 48) and source._cache is not None
    assert source._cache[0][1].features.shape == (2, 384, 2, 3)  # what is kept: the patch map
    second = [out.features for _, out in source]
    assert torch.allclose(first[0], second[0], atol=1e-2)  # float16 cache
    # test-time flip: the averaged output of the mirror image is the mirrored averaged output
    flipped = {"image": image.flip(-1), "mask": batch["mask"]}
    a = next(iter(FeatureSource(net, [batch], torch.device("cpu"), cache_mb=0, flip=True)))[1].features
    b = next(iter(FeatureSource(net, [flipped], torch.device("cpu"), cache_mb=0, flip=True)))[1].features
    assert torch.allclose(a, b.flip(-1), atol=1e-4) and not torch.allclose(a, first[0], atol=1e-2)


def test_evaluate_frozen_vit_features(tmp_path: Path, make_cfg) -> None:
    from usgs.run.evaluate import evaluate

    weights = tmp_path / "vits16.pth"
    torch.save(vit("vit_small_patch16").state_dict(), weights)
    common = ["model=frozen_backbone", f"model.backbone.weights={weights}", "data.image_size=32",
              "max_train_images=8", "max_eval_images=8", "data.eval_batch_size=4"]
    cfg = make_cfg([*common, "task=kmeans", "task.seeds=[0]", "task.pixels_per_image=50", "flip=true"],
                   config_name="evaluate", run_dir=tmp_path / "kmeans")
    assert 0.0 <= evaluate(cfg)["kmeans/pixels/miou"] <= 1.0
    assert "none (pretrained backbone); CRF: False; flip: True" in (tmp_path / "kmeans" / "metrics.md").read_text()
    cfg = make_cfg([*common, "task=linear_probe", "task.pixels_per_image=50"], config_name="evaluate",
                   run_dir=tmp_path / "probe")
    assert "linear_probe/linear_probe/miou" in evaluate(cfg)
