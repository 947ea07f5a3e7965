"""Grad-CAM against the closed form of a linear model, and the classifier's CAM / Grad-CAM agreement."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from usgs.priors.cam import GradCAM, binarize


class _Linear(nn.Module):
    """scores = W . mean_pixels(A) with A = the input itself: Grad-CAM_c = minmax(ReLU(W_c . A))."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        return self.feat(x * 1.0).mean(dim=(2, 3)) @ self.weight.T


@pytest.mark.parametrize("normalize", ["minmax", "max"])
def test_gradcam_equals_the_normalised_linear_map(normalize: str) -> None:
    torch.manual_seed(0)
    acts = torch.rand(2, 2, 5, 6) * 2 + 0.5  # positive: ReLU(W . A) > 0 everywhere for classes 0, 1
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    cams = GradCAM(_Linear(weight), "feat", normalize=normalize)(acts, labels)
    for b in range(2):
        for c in range(3):
            raw = torch.relu(torch.einsum("k,khw->hw", weight[c], acts[b]))
            low = raw.min() if normalize == "minmax" else 0.0  # the seed: (cam - min) / max(cam - min)
            expected = (raw - low) / (raw.max() - low) if labels[b, c] else torch.zeros(5, 6)
            torch.testing.assert_close(cams[b, c], expected)
    assert cams.max() == 1.0 and cams.min() >= 0.0
    # the two normalisations differ on this case: some raw map has a positive minimum
    assert (torch.relu(torch.einsum("ck,bkhw->bchw", weight, acts)).flatten(2).amin(-1) > 0).any()


def test_binarize_is_strict_as_the_seed() -> None:
    cams = torch.tensor([[0.39, 0.4, 0.41]])
    assert binarize(cams, 0.4).tolist() == [[False, False, True]]  # seed: attention > 0.4


def test_unknown_layer_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="feat"):
        GradCAM(_Linear(torch.eye(2)), "nope")


def test_classifier_gradcam_at_its_scoring_features_is_its_cam() -> None:
    from usgs.methods.classifier import ImageClassifier
    from usgs.nets.backbones import vgg16_bn

    torch.manual_seed(0)
    model = ImageClassifier(vgg16_bn(), num_classes=4, pos_weight=None).eval()
    with torch.no_grad():  # ReLU features >= 0: positive weights give non-empty CAMs to compare
        model.scorer.weight.abs_()
        model.scorer.bias.zero_()  # Grad-CAM has no bias term
    image = torch.randn(1, 3, 64, 64)
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    cams = GradCAM(model, "backbone.features.42", normalize="max")(image, labels)  # the default layer
    with torch.no_grad():
        cam = torch.relu(model.cam(image))
        cam = torch.nn.functional.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)
    for c in (0, 1):
        torch.testing.assert_close(cams[0, c], cam[0, c] / cam[0, c].max(), atol=1e-4, rtol=1e-4)
    assert (cams[0, 2:] == 0).all()
    assert model.training is False


def _vgg_fc_classifier(num_classes: int = 3):
    from usgs.methods.classifier import ImageClassifier
    from usgs.nets.backbones import vgg16_bn
    from usgs.nets.vgg import VGGClassifierHead

    return ImageClassifier(vgg16_bn(), num_classes=num_classes, head=VGGClassifierHead(num_classes, hidden=8))


def test_vgg_fc_classifier_has_torchvision_keys() -> None:
    model = _vgg_fc_classifier()
    conv = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]  # torchvision vgg16_bn's conv indices
    expected = set()
    for i in conv:
        expected |= {f"features.{i}.weight", f"features.{i}.bias"}
        expected |= {f"features.{i + 1}.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                       "num_batches_tracked")}
    expected |= {f"classifier.{i}.{k}" for i in (0, 3, 6) for k in ("weight", "bias")}
    keys = {k.removeprefix("backbone.").removeprefix("head.") for k in model.state_dict() if k != "pos_weight"}
    assert keys == expected
    assert model.head.classifier[0].in_features == 512 * 7 * 7


def test_gradcam_through_the_fully_connected_head() -> None:
    torch.manual_seed(0)
    model = _vgg_fc_classifier().eval()
    image = torch.randn(1, 3, 64, 64)
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    with torch.inference_mode():  # as in Lightning's validation loop
        cams = GradCAM(model, "backbone.features.42")(image, labels)
        assert model.predict(image).shape == (1, 3, 64, 64)
    # Grad-CAM written out: weights = spatial mean of d score_1 / d A at features.42 (4x4 here)
    acts = model.backbone(image)["stage5"].detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.head(acts)[0, 1], acts)
    raw = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True)).detach()
    raw = torch.nn.functional.interpolate(raw, size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    torch.testing.assert_close(cams[0, 1], expected, atol=1e-4, rtol=1e-4)
    assert (cams[0, [0, 2]] == 0).all()


def test_vgg_fc_head_has_torchvision_vgg16_bn_size() -> None:
    from usgs.nets.backbones import vgg16_bn
    from usgs.nets.vgg import VGGClassifierHead

    with torch.device("meta"):  # shapes only: no 500 MB allocation
        total = sum(p.numel() for m in (vgg16_bn(), VGGClassifierHead(1000)) for p in m.parameters())
    assert total == 138_365_992  # torchvision's published parameter count of vgg16_bn (ImageNet, 1000 classes)
