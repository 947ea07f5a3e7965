"""Tests of the prior building blocks: morphology, k-means recipes, CRF, saliency, report numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usgs.priors.crf import MASKCONTRAST_CRF, dense_crf
from usgs.priors.kmeans import SeedKMeansPrior, TorchKMeansPrior, pixel_features
from usgs.priors.morphology import Morphology, remove_small_components
from usgs.priors.report import markdown_table, saliency_scores, semantic_scores
from usgs.priors.saliency import (
    SupervisedSaliencyPrior,
    UnsupervisedSaliencyPrior,
    boundary_saliency,
    saliency_postprocess,
)


def _two_colour_images(n: int = 6, size: int = 24) -> list[np.ndarray]:
    """Left half red-ish, right half blue-ish, with a little noise (seeded)."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        im = np.zeros((size, size, 3), np.float64)
        im[:, : size // 2] = (200, 30, 30)
        im[:, size // 2 :] = (30, 30, 200)
        images.append(np.clip(im + rng.normal(0, 8, im.shape), 0, 255).astype(np.uint8))
    return images


def test_morphology_close_then_open_on_hand_built_mask() -> None:
    mask = np.zeros((15, 15), np.uint8)
    mask[3:12, 3:12] = 1
    mask[7, 3:12] = 0  # a 1-px gap through the square: closing fills it
    mask[0, 0] = 1  # an isolated speck: opening removes it
    out = Morphology(kernel=3, shape="rect")(mask)
    expected = np.zeros((15, 15), np.uint8)
    expected[3:12, 3:12] = 1
    assert np.array_equal(out, expected)
    assert np.array_equal(Morphology(kernel=0)(mask), mask)  # kernel 0: identity
    with pytest.raises(ValueError, match="valid"):
        Morphology(shape="star")  # type: ignore[arg-type]


def test_remove_small_components_fraction_and_pixels() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[0:2, 0:2] = 1  # 4 px
    mask[5:10, 5:10] = 2  # 25 px
    out = remove_small_components(mask, min_area=5)
    assert (out[0:2, 0:2] == 255).all() and (out[5:10, 5:10] == 2).all()
    # the background (label 0, 71 px) survives; 0.3 of 100 px = 30 px drops both small blobs
    out = remove_small_components(mask, min_area=0.3)
    assert (out == 0).sum() == 71 and (out == 255).sum() == 29
    assert np.array_equal(Morphology(kernel=0, min_area=5, fill=0)(mask)[0:2, 0:2], np.zeros((2, 2)))


@pytest.mark.parametrize("cls", [SeedKMeansPrior, TorchKMeansPrior])
def test_kmeans_priors_split_two_colours_and_are_deterministic(cls: type) -> None:
    images = _two_colour_images()
    runs = []
    for _ in range(2):
        prior = cls(k=2, local_k=2, seed=3)
        states = prior.local(images, list(range(len(images))))
        prior.fit(states)
        runs.append([prior.finalize(im, s) for im, s in zip(images, states)])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)
    first = runs[0][0]
    # left and right halves get the two different global clusters, in every image consistently
    left, right = int(first[0, 0]), int(first[0, -1])
    assert left != right
    for m in runs[0]:
        assert (m[:, :12] == left).all() and (m[:, 12:] == right).all()


def test_torch_prior_one_stage_and_features() -> None:
    images = _two_colour_images(3)
    feats = pixel_features(images[0], "rgb", xy_weight=2.0)
    assert feats.shape == (24 * 24, 5)
    assert float(feats[:, 3].max()) == pytest.approx(2.0)  # x in [0,1] scaled by the weight
    prior = TorchKMeansPrior(k=2, stages=1, samples_per_image=64)
    states = prior.local(images, [0, 1, 2])
    prior.fit(states)
    out = prior.finalize(images[1], states[1])
    assert out[0, 0] != out[0, -1] and len(np.unique(out)) == 2
    with pytest.raises(ValueError, match="valid"):
        TorchKMeansPrior(colour_space="xyz")  # type: ignore[arg-type]
    # hsv: hue wraps around, so two reds on either side of hue 0 are neighbours, not opposite ends
    reds = pixel_features(np.array([[[200, 30, 36], [200, 36, 30], [30, 200, 30]]], np.uint8), "hsv")
    assert float((reds[0] - reds[1]).norm()) < 0.05 < float((reds[0] - reds[2]).norm())


def test_dense_crf_cleans_noisy_unary_along_an_edge() -> None:
    h, w = 32, 32
    image = np.zeros((h, w, 3), np.uint8)
    image[:, w // 2 :] = 255  # a sharp vertical edge
    truth = np.zeros((h, w), int)
    truth[:, w // 2 :] = 1
    rng = np.random.default_rng(0)
    p1 = np.clip(np.where(truth == 1, 0.65, 0.35) + rng.normal(0, 0.25, (h, w)), 0.01, 0.99)
    unary = np.stack([1 - p1, p1]).astype(np.float32)
    noisy_errors = int((unary.argmax(0) != truth).sum())
    refined = dense_crf(image, unary, **MASKCONTRAST_CRF)  # type: ignore[arg-type]
    assert refined.shape == (2, h, w)
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    assert noisy_errors > 50 and int((refined.argmax(0) != truth).sum()) == 0
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), unary)


def test_saliency_postprocess_maskcontrast_rules() -> None:
    prob = np.zeros((100, 100), np.float32)
    prob[10:40, 10:40] = 0.9  # 9% of the image: kept
    prob[80:85, 80:85] = 0.9  # 0.25%: dropped (< 1%)
    out = saliency_postprocess(prob)
    assert out.dtype == np.uint8 and out.sum() == 900 and out[82, 82] == 0
    tiny = np.zeros((100, 100), np.float32)
    tiny[0:9, 0:10] = 0.9  # 0.9% foreground in one component above... below 1% -> no proposal
    assert (saliency_postprocess(tiny, min_component=0.0) == 255).all()


def test_boundary_saliency_finds_central_object() -> None:
    image = np.full((64, 64, 3), (40, 120, 40), np.uint8)  # green field
    image[20:44, 20:44] = (220, 200, 30)  # a yellow square in the middle
    prior = UnsupervisedSaliencyPrior(size=32, grid=6)
    state = prior.local([image], [0])[0]
    out = prior.finalize(image, state)
    truth = np.zeros((64, 64), np.uint8)
    truth[20:44, 20:44] = 1
    iou = ((out == 1) & (truth == 1)).sum() / ((out == 1) | (truth == 1)).sum()
    assert iou > 0.8
    labels = np.zeros((4, 4), int)
    labels[1:3, 1:3] = 1  # superpixel 1 never touches the border
    lab = np.zeros((4, 4, 3))
    lab[1:3, 1:3] = 50.0
    s = boundary_saliency(labels, lab)
    # the smoothness term pulls the two connected superpixels a little towards each other
    assert s[1, 1] > 0.9 and s[0, 0] < 0.25


def test_semantic_scores_by_hand() -> None:
    # 2 classes, 3 clusters. GT: [0,0,1,1]; prediction: [2,2,0,1]
    pred = np.array([[2, 2, 0, 1]], np.uint8)
    gt = np.array([[0, 0, 1, 1]], np.uint8)
    s = semantic_scores([pred], [gt], num_classes=2, num_labels=3)
    # majority: 2->0, 0->1, 1->1: perfect
    assert s["miou_majority"] == pytest.approx(1.0)
    # hungarian: 2->0 and one of {0,1}->1 (the other unmatched = wrong): IoU0 = 1, IoU1 = 1/2
    assert s["miou_hungarian"] == pytest.approx(0.75) and s["pixel_accuracy_hungarian"] == pytest.approx(0.75)
    # a prior pixel at 255 is excluded and reported through coverage
    s = semantic_scores([np.array([[2, 255, 0, 1]], np.uint8)], [gt], 2, 3)
    assert s["coverage"] == pytest.approx(0.75) and s["miou_majority"] == pytest.approx(1.0)
    assert "miou_identity" not in s  # cluster ids: only matched scores


def test_semantic_scores_of_pseudo_labels_without_matching() -> None:
    # class ids swapped: matching repairs it, the identity score (what a network trained on them
    # inherits) does not; 255 stays excluded
    pred = np.array([[1, 1, 0, 255]], np.uint8)
    gt = np.array([[0, 0, 1, 1]], np.uint8)
    s = semantic_scores([pred], [gt], num_classes=2, num_labels=2, class_ids=True)
    assert s["miou_hungarian"] == pytest.approx(1.0)
    assert s["miou_identity"] == pytest.approx(0.0) and s["pixel_accuracy_identity"] == pytest.approx(0.0)
    s = semantic_scores([np.array([[0, 0, 1, 255]], np.uint8)], [gt], 2, 2, class_ids=True)
    assert s["miou_identity"] == pytest.approx(1.0) and s["coverage"] == pytest.approx(0.75)


def test_saliency_scores_by_hand() -> None:
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 255]], np.uint8)  # 255 = no proposal -> background
    gt = np.array([[1, 1, 1, 0], [0, 0, 0, 255]], np.uint8)  # last pixel ignored
    s = saliency_scores([pred], [gt])
    # TP 2, FP 1, FN 1: IoU 2/4, precision = recall = 2/3, F = 2/3; MAE = 2 wrong / 7 valid
    assert s["iou"] == pytest.approx(0.5)
    assert s["fbeta"] == pytest.approx(2 / 3) and s["precision"] == pytest.approx(2 / 3)
    assert s["mae"] == pytest.approx(2 / 7)


def test_markdown_table_union_of_columns() -> None:
    text = markdown_table([{"a": 1, "b": 0.5, "val/miou": 0.1234}, {"a": 2, "c": "x"}])
    assert text.splitlines()[0] == "| a | b | val/miou (%) | c |"  # scores: fractions shown in percent
    assert text.splitlines()[2] == "| 1 | 0.50 | 12.3 |  |"


class _LeftHalfNet(torch.nn.Module):
    """Fake 2-class segmentation net: foreground = left half of its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, 1, :, : x.shape[-1] // 2] = 5.0
        logits[:, 0, :, x.shape[-1] // 2 :] = 5.0
        return logits


def test_supervised_saliency_resizes_back_and_postprocesses() -> None:
    image = np.zeros((30, 50, 3), np.uint8)
    prior = SupervisedSaliencyPrior(_LeftHalfNet(), size=16)
    out = prior.finalize(image, prior.local([image], [0])[0])
    assert out.shape == (30, 50)
    assert (out[:, :24] == 1).all() and (out[:, 26:] == 0).all()


def test_self_training_state_round_trip() -> None:
    images = _two_colour_images(4, size=32)
    prior = UnsupervisedSaliencyPrior(size=32, grid=4, self_train_steps=2, self_train_size=32)
    assert prior.needs_fit
    states = prior.local(images, [0, 1, 2, 3])
    prior.fit(states, lambda i: images[i])
    restored = UnsupervisedSaliencyPrior(size=32, grid=4, self_train_steps=2, self_train_size=32)
    restored.load_fit_state(prior.fit_state())
    assert np.array_equal(prior.finalize(images[0], states[0]), restored.finalize(images[0], states[0]))


class _HalvesEmbedding(torch.nn.Module):
    """A trained-network stand-in whose embedding separates the left and right image halves."""

    def embed(self, image: torch.Tensor) -> tuple[torch.Tensor, None]:
        b, _, h, w = image.shape
        features = torch.zeros(b, 2, h, w)
        features[:, 0, :, : w // 2] = 1.0
        features[:, 1, :, w // 2 :] = 1.0
        return features, None


def test_kmeans_prior_uses_network_features_when_given() -> None:
    image = np.full((16, 16, 3), 90, dtype=np.uint8)  # one colour: colour k-means cannot split it
    common = dict(k=2, local_k=2, xy_weight=0.0, samples_per_image=256, restarts=1, seed=0)
    results = {}
    for name, model in (("colour", None), ("features", _HalvesEmbedding())):
        prior = TorchKMeansPrior(**common, model=model)
        states = prior.local([image], [0])
        prior.fit(states)
        results[name] = prior.finalize_raw(image, states[0])

    def splits_halves(labels: np.ndarray) -> bool:
        left, right = labels[:, :8], labels[:, 8:]
        return len(np.unique(left)) == 1 and len(np.unique(right)) == 1 and left[0, 0] != right[0, 0]

    assert splits_halves(results["features"])
    assert not splits_halves(results["colour"])
