"""Control rows (usgs/evaluation/controls.py) on hand-made batches: what an input alone scores."""

from __future__ import annotations

import pytest
import torch

from usgs.evaluation.controls import InputFeatures, prior_only, saliency_only
from usgs.evaluation.linear_probe import LinearProbe


def _batch() -> dict[str, torch.Tensor]:
    mask = torch.tensor([[[0, 0, 1, 1], [0, 0, 2, 2]]])  # background, two object classes
    saliency = torch.tensor([[[0, 0, 1, 1], [0, 255, 1, 0]]])  # ignore 255 counts as not salient
    return {"image": torch.zeros(1, 3, 2, 4), "mask": mask, "saliency": saliency, "prior": mask.clone()}


def test_saliency_only_is_one_cluster_matched_on_iou() -> None:
    result = saliency_only([_batch()], "saliency", num_classes=3, class_names=["bg", "a", "b"])
    scores = result.scores["saliency_only"]
    # salient {(0,2),(0,3),(1,2)} -> cluster 1 -> class a (IoU 2/3); the rest -> background (IoU 4/5)
    assert scores["iou"][:2] == [pytest.approx(4 / 5), pytest.approx(2 / 3)] and scores["iou"][2] == 0.0
    assert scores["miou"] == [pytest.approx((4 / 5 + 2 / 3) / 3)]
    assert result.flat()["kmeans/saliency_only/miou"] == pytest.approx((4 / 5 + 2 / 3) / 3)


def test_prior_only_scores_the_prior_and_leaves_its_unlabelled_pixels_out() -> None:
    batch = _batch()
    batch["prior"][0, 1, 3] = 255
    result = prior_only([batch], num_classes=3, num_labels=3, class_names=["bg", "a", "b"])
    assert result.scores["prior_only"]["miou"] == [pytest.approx(1.0)]


def test_linear_probe_control_reads_saliency_and_colour_only() -> None:
    batch = _batch()
    source = InputFeatures([batch], "saliency")
    (_, out), = list(source)
    assert out.features.shape == (1, 4, 2, 4) and torch.equal(out.features.dense()[0, 0], (batch["saliency"][0] == 1).float())
    result = LinearProbe(pixels_per_image=8, max_iter=50).run(source, InputFeatures([batch], "saliency"), 3)
    # black image: only the saliency channel separates pixels, so the probe cannot beat saliency_only
    assert result.scores["linear_probe"]["miou"][0] <= (4 / 5 + 2 / 3) / 3 + 1e-6
    with pytest.raises(KeyError, match="no 'prior2'"):
        list(InputFeatures([batch], "prior2"))
