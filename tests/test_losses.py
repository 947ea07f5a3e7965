"""Hand-computed checks of the segmentation losses in usgs.methods.losses."""

from __future__ import annotations

import math

import pytest
import torch

from usgs.methods.losses import CrossEntropyLoss, DiceLoss, FocalLoss, SoftCrossEntropyLoss

ALL_LOSSES = [CrossEntropyLoss, SoftCrossEntropyLoss, DiceLoss, FocalLoss]


def test_dice_hand_computed_with_ignore() -> None:
    # p = 0.5 for both classes; pixel 1 ignored. Class 0: inter 0.5, card 0.5 + 1 -> dice 2/3,
    # loss 1/3; class 1 absent -> 0; mean over C = 2 classes -> 1/6.
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 255]]])
    assert DiceLoss()(logits, target).item() == pytest.approx(1 / 6, abs=1e-6)


def test_dice_two_images_pool_over_batch() -> None:
    # Perfect, confident prediction of a 2-class target -> loss ~ 0; swapped -> ~ 1.
    target = torch.tensor([[[0, 1], [1, 0]], [[1, 1], [0, 0]]])
    onehot = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float()
    assert DiceLoss()(onehot * 50, target).item() == pytest.approx(0.0, abs=1e-5)
    assert DiceLoss()((1 - onehot) * 50, target).item() == pytest.approx(1.0, abs=1e-5)


def test_soft_ce_matches_label_smoothing_formula() -> None:
    # p = (0.25, 0.75), target 1: (1 - 0.1) * -log 0.75 + 0.1 * mean(-log 0.25, -log 0.75)
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    target = torch.tensor([[[1]]])
    expected = 0.9 * -math.log(0.75) + 0.1 * 0.5 * (-math.log(0.25) - math.log(0.75))
    assert SoftCrossEntropyLoss()(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx(-math.log(0.75), rel=1e-5)


def test_focal_hand_computed_and_reduces_to_ce() -> None:
    # p_t = 0.5: -(1 - 0.5)^2 log 0.5 = 0.25 * log 2
    logits = torch.zeros(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    assert FocalLoss()(logits, target).item() == pytest.approx(0.25 * math.log(2), rel=1e-5)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, 4, generator=gen)
    target = torch.randint(0, 5, (2, 4, 4), generator=gen)
    target[0, 0] = 255
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(
        CrossEntropyLoss()(logits, target).item(), rel=1e-5
    )
    # focusing only down-weights: focal(gamma=2) < CE whenever p_t > 0
    assert FocalLoss()(logits, target).item() < CrossEntropyLoss()(logits, target).item()


@pytest.mark.parametrize("loss_cls", ALL_LOSSES)
def test_ignored_pixels_do_not_matter(loss_cls: type) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 5, 5, generator=gen, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 5), generator=gen)
    target[:, :2] = 255
    changed = logits.detach().clone()
    changed[:, :, :2] = torch.randn(2, 4, 2, 5, generator=gen) * 10
    loss = loss_cls()
    assert loss(logits, target).item() == pytest.approx(loss(changed, target).item(), rel=1e-6)
    loss(logits, target).backward()
    assert logits.grad is not None and logits.grad[:, :, :2].abs().max() == 0
    assert logits.grad[:, :, 2:].abs().max() > 0


@pytest.mark.parametrize("loss_cls", ALL_LOSSES)
def test_all_ignored_is_zero_not_nan(loss_cls: type) -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    value = loss_cls()(logits, torch.full((1, 2, 2), 255))
    assert value.item() == 0.0
    value.backward()


@pytest.mark.parametrize("loss_cls", ALL_LOSSES)
def test_bad_input_is_a_clear_error(loss_cls: type) -> None:
    with pytest.raises(ValueError, match="channels"):
        loss_cls()(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match="expected logits"):
        loss_cls()(torch.zeros(3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
