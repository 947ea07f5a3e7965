"""The image-level seed's test-time CRF on DeepLab's labels (evaluate_deeplabv3.py + apply_dense_crf.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usgs.data.transforms import normalize
from usgs.priors.crf import DEEPLAB_TEST_CRF, label_crf

pytest.importorskip("pydensecrf")


def _scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = np.zeros((24, 32, 3), np.uint8)
    image[:, :16] = (220, 40, 40)
    image[:, 16:] = (40, 40, 220)
    labels = np.where(np.arange(32) < 16, 3, 7)[None].repeat(24, 0)
    noisy = labels.copy()
    flip = rng.random(labels.shape) < 0.1
    noisy[flip] = 10 - noisy[flip]  # 10% of pixels take the other class
    return image, noisy


def test_label_crf_matches_pydensecrf_unary_from_labels() -> None:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    image, noisy = _scene()
    classes, index = np.unique(noisy, return_inverse=True)  # the seed's get_crf
    crf = dcrf.DenseCRF2D(32, 24, len(classes))
    crf.setUnaryEnergy(unary_from_labels(index.reshape(24, 32), len(classes), gt_prob=0.9, zero_unsure=False))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=121, srgb=5, rgbim=np.ascontiguousarray(image), compat=4)
    q = np.array(crf.inference(10)).reshape(len(classes), 24, 32)
    expected = classes[q.argmax(0)]
    np.testing.assert_array_equal(label_crf(image, noisy, **DEEPLAB_TEST_CRF), expected)


def test_label_crf_cleans_noise_along_colour_edges_and_keeps_one_class_maps() -> None:
    image, noisy = _scene()
    clean = label_crf(image, noisy, **DEEPLAB_TEST_CRF)
    truth = np.where(np.arange(32) < 16, 3, 7)[None].repeat(24, 0)
    assert (clean == truth).mean() > (noisy == truth).mean() + 0.05
    one = np.full((24, 32), 5)
    np.testing.assert_array_equal(label_crf(image, one), one)


def test_weak_deeplab_applies_the_crf_at_test_only() -> None:
    from usgs.methods.weak_deeplab import WeakDeepLab

    image, noisy = _scene()
    logits = torch.nn.functional.one_hot(torch.from_numpy(noisy), 11).permute(2, 0, 1)[None].float()

    class _Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits

    batch = {"image": normalize(image)[None], "mask": torch.from_numpy(np.where(np.arange(32) < 16, 3, 7)[None]
                                                                        .repeat(24, 0))[None]}
    expected = label_crf(image, noisy, **DEEPLAB_TEST_CRF)  # the same CRF, on the same labels
    with_crf = WeakDeepLab(net=_Fixed(), num_classes=11, test_crf=DEEPLAB_TEST_CRF)
    with_crf.test_step(batch, 0)
    without = WeakDeepLab(net=_Fixed(), num_classes=11, test_crf=None)
    without.test_step(batch, 0)
    truth = batch["mask"].numpy()[0]
    acc_crf = float(with_crf.test_metric.compute()["pixel_accuracy"])
    acc_raw = float(without.test_metric.compute()["pixel_accuracy"])
    assert acc_crf == pytest.approx((expected == truth).mean(), abs=1e-6)
    assert acc_raw == pytest.approx((noisy == truth).mean(), abs=1e-6)
