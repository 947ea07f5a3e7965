"""Weak supervision pieces: nGWP losses, Stochastic Gate, target mixing, EncDecUnpool, rare sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from usgs.data.sampling import RareClassSampler
from usgs.methods.gwp import (
    balanced_self_supervision_loss,
    focal_mask_penalty,
    ngwp_scores,
    pseudo_gt_from_masks,
)
from usgs.methods.weak_deeplab import uses_ground_truth
from usgs.nets.single_stage_net import StochasticGate

torch.set_num_threads(1)


def test_ngwp_and_focal_penalty_by_hand() -> None:
    logits = torch.tensor([[[[2.0, 4.0]], [[0.0, 0.0]]]])  # [1,2,1,2]
    masks = torch.tensor([[[[1.0, 0.5]], [[0.0, 0.5]]]])
    # class 0: (2*1 + 4*0.5) / (1 + 1.5) = 1.6; class 1: 0 / (1 + 0.5) = 0
    torch.testing.assert_close(ngwp_scores(logits, masks), torch.tensor([[1.6, 0.0]]))
    # mean masks 0.75 and 0.25: (1-m)^3 log(0.01+m)
    expected = torch.tensor([[0.25**3 * math.log(0.76), 0.75**3 * math.log(0.26)]])
    torch.testing.assert_close(focal_mask_penalty(masks, 3.0, 0.01), expected)


def test_pseudo_gt_keeps_confident_pixels_and_drops_ambiguous_ones() -> None:
    masks = torch.tensor([[[[0.9, 0.5, 0.1, 0.7]], [[0.1, 0.5, 0.9, 0.8]]]])
    gt = pseudo_gt_from_masks(masks, background=False)  # thresholds 0.54 and 0.54
    expected = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 0.0]]]])  # last: both > 0.54
    torch.testing.assert_close(gt, expected)
    gt_bg = pseudo_gt_from_masks(masks, background=True)  # background threshold 0.63 instead
    torch.testing.assert_close(gt_bg, expected)


def test_balanced_loss_needs_every_present_class_in_the_pseudo_gt() -> None:
    logits = torch.zeros(1, 2, 1, 4)
    pseudo = torch.tensor([[[[1.0, 1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0, 1.0]]]])
    loss = balanced_self_supervision_loss(logits, pseudo, torch.tensor([2.0]))
    # uniform logits -> CE log 2 per pixel; weights (4-3)/(1+4) = 0.2 (class 0), (4-1)/(1+4) = 0.6 (class 1)
    torch.testing.assert_close(loss, torch.tensor([(3 * 0.2 + 0.6) * math.log(2) / 4]))
    assert balanced_self_supervision_loss(logits, pseudo, torch.tensor([3.0])).item() == 0.0


def test_stochastic_gate_mixes_in_eval_and_is_unbiased_in_training() -> None:
    gate = StochasticGate(psi=0.3)
    x1, x2 = torch.full((1, 1, 200, 200), 2.0), torch.full((1, 1, 200, 200), -1.0)
    torch.testing.assert_close(gate.eval()(x1, x2), torch.full_like(x1, 0.7 * 2 - 0.3))
    torch.manual_seed(0)
    out = gate.train()(x1, x2)
    values = out.unique()
    assert len(values) == 2 and values[0] == -1.0 and values[1].item() == pytest.approx((2.0 + 0.3) / 0.7)
    assert abs(out.mean().item() - 2.0) < 0.05  # E[out] = x1
    assert abs((out == -1.0).float().mean().item() - 0.3) < 0.01


def test_gt_fraction_selects_a_fixed_share_of_samples() -> None:
    index = torch.arange(1000)
    for fraction in (0.0, 0.1, 0.5, 1.0):
        share = uses_ground_truth(index, fraction).float().mean().item()
        assert abs(share - fraction) <= 0.002
    assert torch.equal(uses_ground_truth(index, 0.3), uses_ground_truth(index, 0.3))


def test_weak_deeplab_target_mixes_prior_and_mask() -> None:
    from usgs.methods.weak_deeplab import WeakDeepLab

    model = WeakDeepLab(net=torch.nn.Conv2d(3, 3, 1), num_classes=3, gt_fraction=0.5)
    batch = {
        "index": torch.arange(8),
        "mask": torch.zeros(8, 2, 2, dtype=torch.long),
        "prior": torch.ones(8, 2, 2, dtype=torch.long),
        "image": torch.randn(8, 3, 2, 2),
    }
    use_gt = uses_ground_truth(batch["index"], 0.5)
    assert 0 < int(use_gt.sum()) < 8
    target = model.target(batch)
    assert torch.equal(target[:, 0, 0], (~use_gt).long())
    del batch["prior"]
    with pytest.raises(KeyError, match="data.prior"):
        model.target(batch)
    model.gt_fraction = 1.0
    assert torch.equal(model.target(batch), batch["mask"])


def test_encdec_unpool_restores_resolution_at_the_seed_crop_size() -> None:
    from usgs.nets.encdec_unpool import EncDecUnpool

    net = EncDecUnpool(num_classes=6).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 96)).shape == (1, 6, 64, 96)
        assert net(torch.randn(1, 3, 200, 200)).shape == (1, 6, 200, 200)  # the seed's 200 px tiles
    # the seed: element-wise Dropout(0.5) right after each of the 5 unpoolings, no channel dropout
    assert isinstance(net.unpool_dropout, torch.nn.Dropout) and net.unpool_dropout.p == 0.5
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in net.modules())
    # decoder convs per stage as the seed's conv5_3_D ... conv1_2_D: 3, 3, 3, 2, 1 (+ conv1_1_D)
    assert [sum(isinstance(m, torch.nn.Conv2d) for m in b.modules()) for b in net.decoder] == [3, 3, 3, 2, 1]
    suite = EncDecUnpool(num_classes=6, block_order="conv_bn_relu", dropout_after_unpool=False)
    assert sum(isinstance(m, torch.nn.Dropout2d) for m in suite.decoder.modules()) == 5
    with pytest.raises(ValueError, match="at least 32"):
        net(torch.randn(1, 3, 16, 64))


def test_encdec_unpool_block_order() -> None:
    from usgs.nets.encdec_unpool import EncDecUnpool

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for order in ("conv_relu_bn", "conv_bn_relu"):
        net = EncDecUnpool(num_classes=2, block_order=order).eval()
        conv, bn = net.backbone.features[0], net.backbone.features[1]
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            y = conv(x)
            scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps))[None, :, None, None]
            shift = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps))[None, :, None, None]
            # the seed's conv1_1_bn(F.relu(conv1_1(x))) vs the usual relu(bn(conv(x))), BN as an affine map
            expected = torch.relu(y) * scale + shift if order == "conv_relu_bn" else torch.relu(y * scale + shift)
            captured = []
            handle = bn.register_forward_hook(lambda _m, _i, out, store=captured: store.append(out.clone()))
            net(x)
            handle.remove()
            got = captured[0] if order == "conv_relu_bn" else torch.relu(captured[0])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rare_class_sampler_favours_rare_samples() -> None:
    presence = np.zeros((100, 3), dtype=bool)
    presence[:, 0] = True
    presence[:10, 2] = True  # 10 of 100 samples hold the rare class 2
    sampler = RareClassSampler(presence, rare_classes=[2], factor=9.0, num_samples=20000, seed=1)
    drawn = np.array(list(sampler))
    # expected share of rare samples: 10*9 / (10*9 + 90) = 0.5
    assert abs((drawn < 10).mean() - 0.5) < 0.02
    first, second = (list(RareClassSampler(presence, [2], 9.0, 50, seed=1)) for _ in range(2))
    assert first == second  # seeded
    uniform = RareClassSampler(presence, rare_classes=[2], factor=1.0, num_samples=20000, seed=1)
    assert abs((np.array(list(uniform)) < 10).mean() - 0.1) < 0.01
    with pytest.raises(ValueError, match="rare_classes"):
        RareClassSampler(presence, rare_classes=[3])


def test_max_unpool_matches_torch() -> None:
    from usgs.nets.encdec_unpool import max_unpool

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 12)
    pooled, indices = torch.nn.functional.max_pool2d(x, 2, 2, return_indices=True)
    torch.testing.assert_close(
        max_unpool(pooled, indices, (8, 12)), torch.nn.functional.max_unpool2d(pooled, indices, 2, 2)
    )
    odd = torch.randn(2, 3, 25, 13)  # odd sizes: the pooling drops the last row / column
    pooled, indices = torch.nn.functional.max_pool2d(odd, 2, 2, return_indices=True)
    torch.testing.assert_close(max_unpool(pooled, indices, (25, 13)),
                               torch.nn.functional.max_unpool2d(pooled, indices, 2, 2, output_size=(25, 13)))
