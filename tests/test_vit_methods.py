"""ViT specifics: Grad-CAM on patch features, frozen features cached at patch resolution, frozen-feature
evaluation (k-means, linear probe). That every method trains a ViT: tests/test_backbones_fit.py."""

from __future__ import annotations

from pathlib import Path

import torch

from usgs.evaluation.features import FeatureSource
from usgs.methods.classifier import ImageClassifier
from usgs.methods.frozen_backbone import FrozenBackbone
from usgs.nets.vit import vit
from usgs.priors.cam import GradCAM

FAST = ["logger=csv", "data.num_workers=0", "trainer.fast_dev_run=true", "data.image_size=32",
        "data.batch_size=4", "data.eval_batch_size=4"]


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
    first = [out.features.dense() for _, out in source]
    assert first[0].shape == (2, 384, 32, 48) and source._cache is not None
    assert source._cache[0][1].features.shape == (2, 384, 2, 3)  # what is kept: the patch map
    second = [out.features.dense() for _, out in source]
    assert torch.allclose(first[0], second[0], atol=1e-2)  # float16 cache
    # test-time flip: the averaged output of the mirror image is the mirrored averaged output
    flipped = {"image": image.flip(-1), "mask": batch["mask"]}
    a = next(iter(FeatureSource(net, [batch], torch.device("cpu"), cache_mb=0, flip=True)))[1].features.dense()
    b = next(iter(FeatureSource(net, [flipped], torch.device("cpu"), cache_mb=0, flip=True)))[1].features.dense()
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
