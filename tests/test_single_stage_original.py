"""Araslanov & Roth's training and inference settings (1-stage-wseg base_net.py, infer_val.py)."""

from __future__ import annotations

import torch
from torch import nn

from usgs.methods.single_stage import SingleStage
from usgs.nets.single_stage_net import SingleStageNet

torch.set_num_threads(1)


def _model(**kwargs: object) -> SingleStage:
    torch.manual_seed(0)
    net = SingleStageNet(num_classes=3, backbone="resnet18", channels=16, aspp_rates=(12, 24, 36))
    return SingleStage(net, num_classes=3, pamr_iters=1, **kwargs)


def test_frozen_bn_and_learning_rate_multipliers() -> None:
    model = _model(background_index=0).train()
    backbone_bn, aspp_bn = model.net.backbone.bn1, model.net.aspp.project[1]
    decoder_bn = model.net.classifier[0][1]
    before = {n: t.clone() for n, t in [("bb_mean", backbone_bn.running_mean), ("bb_w", backbone_bn.weight),
                                        ("aspp_mean", aspp_bn.running_mean), ("aspp_w", aspp_bn.weight),
                                        ("dec_mean", decoder_bn.running_mean)]}
    groups = model.param_groups()
    optimizer = torch.optim.SGD([{**g, "lr": 0.1 * g.pop("lr_scale")} for g in groups], lr=0.1, weight_decay=1e-3)
    image = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    loss = model.training_step({"image": image, "labels": labels}, 0)
    loss.backward()
    optimizer.step()
    assert torch.equal(backbone_bn.running_mean, before["bb_mean"])  # statistics fixed
    assert torch.equal(backbone_bn.weight, before["bb_w"]) and not backbone_bn.weight.requires_grad  # affine fixed
    assert torch.equal(aspp_bn.running_mean, before["aspp_mean"])  # ASPP statistics fixed ...
    assert not torch.equal(aspp_bn.weight, before["aspp_w"])  # ... its affine parameters learn
    assert not torch.equal(decoder_bn.running_mean, before["dec_mean"])  # decoder BN as usual

    def group_of(param: nn.Parameter) -> dict:
        return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))

    assert group_of(model.net.backbone.conv1.weight)["lr"] == 0.1 * 1  # backbone weights x1
    assert group_of(model.net.aspp.convs[0][0].weight)["lr"] == 0.1 * 10  # new weights x10
    bias = group_of(model.net.classifier[-1].bias)  # new biases x20, no weight decay
    assert bias["lr"] == 0.1 * 20 and bias["weight_decay"] == 0.0
    frozen = {id(p) for p in backbone_bn.parameters()}
    assert not any(id(p) in frozen for g in groups for p in g["params"])


def test_multiscale_flip_inference() -> None:
    image = torch.randn(1, 3, 32, 48)
    flipped = _model(test_scales=(1.0, 0.5, 1.5), test_flip=True).eval()
    with torch.no_grad():
        # flip averaging: the prediction of the mirrored image is the mirrored prediction
        torch.testing.assert_close(flipped.predict(image.flip(-1)), flipped.predict(image).flip(-1))
        single = _model().eval()
        assert not torch.allclose(single.predict(image.flip(-1)), single.predict(image).flip(-1), atol=1e-4)
        bg1 = _model(background_index=0, test_scales=(1.0, 0.5), bg_pow=1.0).eval().predict(image)
        bg3 = _model(background_index=0, test_scales=(1.0, 0.5), bg_pow=3.0).eval().predict(image)
    torch.testing.assert_close(bg3[:, 0], bg1[:, 0] ** 3)  # BG_POW on the background channel only
    torch.testing.assert_close(bg3[:, 1:], bg1[:, 1:])


def test_test_crf_refines_the_merged_masks() -> None:
    import pytest

    pytest.importorskip("pydensecrf")
    from usgs.data.transforms import denormalize
    from usgs.priors.crf import WEAK_CRF, dense_crf

    model = _model(test_crf=WEAK_CRF).eval()
    image = torch.randn(1, 3, 32, 32)
    mask = torch.randint(0, 3, (1, 32, 32))
    with torch.no_grad():
        model.test_step({"image": image, "mask": mask}, 0)
        probs = model.predict(image)[0].numpy()
    # the authors' crf_inference on the merged masks, then arg-max
    refined = dense_crf(denormalize(image)[0].numpy(), probs, **WEAK_CRF).argmax(0)
    expected = float((refined == mask[0].numpy()).mean())
    assert float(model.test_metric.compute()["pixel_accuracy"]) == pytest.approx(expected, abs=1e-6)


def _stub_masks(calls: list, full: int):
    """masks_and_scores stand-in: class 0 = the input's marked half (channel 0 > 0) weighted by the
    input's scale, class 1 = the other half, class 2 = 0.5 everywhere; class 2's score is cut."""

    def stub(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(tuple(x.shape[-2:]))
        marked = (x[:, :1] > 0).float()
        masks = torch.cat([marked * (x.shape[-2] / full), 1 - marked, torch.full_like(marked, 0.5)], 1)
        return masks, torch.tensor([[5.0, 5.0, -5.0]])  # sigmoid(-5) = 0.007 < fp_cut_score 0.3

    return stub


def test_inference_masks_merge_scales_and_flips_like_infer_val(monkeypatch) -> None:
    from usgs.methods.single_stage import InferenceMasks

    model = _model().eval()
    calls: list = []
    monkeypatch.setattr(model, "masks_and_scores", _stub_masks(calls, 16))
    image = torch.zeros(1, 3, 16, 16)
    image[:, 0, :, :8], image[:, 0, :, 8:] = 1.0, -1.0  # left half marked
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    masks = InferenceMasks(model, scales=(1.0, 0.5), flip=True, crf=None)(image, labels)
    assert calls == [(16, 16), (16, 16), (8, 8), (8, 8)]  # each scale plain and mirrored
    # columns 0-6 / 9-15 are clear of the bilinear blend at the halves' border (8 -> 16 px upsampling)
    left, right = masks[0, :, :, :7], masks[0, :, :, 9:]
    # flipped passes mirrored back: class 0 stays on the left, mean of weights (1, 1, 0.5, 0.5) = 0.75
    assert torch.allclose(left[0], torch.tensor(0.75)) and torch.allclose(right[0], torch.tensor(0.0))
    assert torch.allclose(left[1], torch.tensor(0.0)) and torch.allclose(right[1], torch.tensor(1.0))
    assert (masks[0, 2] == 0).all()  # cut by its score, whatever the image labels say
    # the authors' TEST.USE_GT_LABELS: the image labels decide instead
    gt = InferenceMasks(model, scales=(1.0, 0.5), flip=True, crf=None, use_gt_labels=True)(image, labels)
    assert (gt[0, 1] == 0).all() and torch.allclose(gt[0, 2], torch.tensor(0.5))


def test_inference_masks_default_to_the_authors_settings_and_crf(make_cfg) -> None:
    import pytest

    pytest.importorskip("pydensecrf")
    from hydra.utils import instantiate

    from usgs.data.transforms import denormalize
    from usgs.priors.crf import dense_crf

    cfg = make_cfg(["prior=single_stage", "data=shapes"], config_name="make_priors")
    model = _model().eval()
    source = instantiate(cfg.prior.attention)(model)
    assert source.scales == (1.0, 0.5, 1.5, 2.0) and source.flip is True and source.use_gt_labels is False
    # utils/dcrf.py: 10 iterations, Gaussian sxy 3 compat 3, bilateral sxy 80 srgb 13 compat 10
    assert source.crf == {"iters": 10, "gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 80,
                          "bilateral_srgb": 13, "bilateral_compat": 10}
    image = torch.randn(1, 3, 24, 24)
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    with torch.no_grad():
        merged = model.infer(image, None, (1.0, 0.5, 1.5, 2.0), True)[0].numpy()
    expected = dense_crf(denormalize(image)[0].numpy(), merged, **source.crf)
    assert torch.allclose(source(image, labels)[0], torch.from_numpy(expected), atol=1e-5)
