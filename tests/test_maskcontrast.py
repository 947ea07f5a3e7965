"""MaskContrast: loss pieces against hand-computed values, the module's update rules, 2-process gathers."""

from __future__ import annotations

import functools
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from usgs.data.base import SegmentationDataset
from usgs.data.transforms import normalize
from usgs.methods.contrastive import (
    PrototypeQueue,
    all_gather_cat,
    balanced_bce,
    contrastive_logits,
    enet_class_weights,
    gathered_offset,
    mask_prototypes,
    shuffle_batch,
    unshuffle_batch,
)
from usgs.methods.maskcontrast import MaskContrast
from usgs.methods.maskcontrast_transforms import (
    MaskContrastTransform,
    PhotometricAugment,
    foreground_fraction,
)
from usgs.nets.deeplab import DeepLabV3


def tiny_module(**kwargs) -> MaskContrast:
    torch.manual_seed(0)
    net = DeepLabV3(
        num_classes=8,
        backbone="resnet18",
        output_stride=8,
        aspp_rates=(1, 2, 3),
        head_channels=16,
        dropout=0.0,
    )  # deterministic keys: the checks below recompute them
    opt = functools.partial(torch.optim.SGD, lr=0.01)
    module = MaskContrast(net, num_classes=4, optimizer=opt, queue_size=8, **kwargs)
    module.log_dict = lambda *a, **k: None  # no trainer attached
    return module


def test_mask_prototypes_hand_computed() -> None:
    emb = torch.zeros(2, 2, 2, 2)
    emb[0, 0] = torch.tensor([[1.0, 3.0], [0.0, 5.0]])
    emb[0, 1] = torch.tensor([[0.0, 4.0], [7.0, 0.0]])
    sal = torch.tensor([[[1, 1], [0, 255]], [[0, 0], [255, 0]]])
    protos, valid = mask_prototypes(emb, sal)
    # image 0: foreground pixels (1,0) and (3,4) -> sum (4,4) -> unit (1,1)/sqrt(2); ignore and bg excluded
    assert torch.allclose(protos[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert valid.tolist() == [True, False]
    assert torch.equal(protos[1], torch.zeros(2))


def test_contrastive_logits_targets_offset_and_masking() -> None:
    query = torch.zeros(2, 2, 1, 2)
    query[:, 0] = 1.0  # every pixel embeds to (1, 0)
    sal = torch.tensor([[[1, 0]], [[1, 1]]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, -1.0]])
    valid = torch.tensor([True, True, True, False])
    queue = torch.tensor([[-1.0, 0.0]])
    logits, target = contrastive_logits(query, sal, protos, valid, queue, temperature=0.5, offset=2)
    assert target.tolist() == [2, 3, 3]  # pixel of image 0 -> row 2, two pixels of image 1 -> row 3
    expected = torch.tensor([1.0, 0.0, 0.6, float("-inf"), -1.0]) / 0.5
    assert torch.equal(logits, expected.expand(3, -1))


def test_enet_class_weights_formula() -> None:
    target = torch.tensor([0, 0, 0, 2])  # 4 query pixels: 3 of image 0, 1 of image 2, none of 1 and 3
    w = enet_class_weights(target, 4)
    expected = [1 / math.log(1.02 + 0.75), 1 / math.log(1.02), 1 / math.log(1.02 + 0.25), 1 / math.log(1.02)]
    assert torch.allclose(w, torch.tensor(expected))


def test_training_loss_uses_enet_weighted_cross_entropy() -> None:
    torch.manual_seed(0)
    module = tiny_module(momentum=0.0, saliency_weight=0.0)
    module.augment = PhotometricAugment(jitter_p=0.0, gray_p=0.0)
    image = torch.randn(2, 3, 16, 16)
    sal = torch.zeros(2, 16, 16, dtype=torch.long)
    sal[0, :12] = 1  # 192 query pixels
    sal[1, 2:6, 2:6] = 1  # 16 query pixels: the E-Net weight lifts them
    module.train()
    queue = module.queue.queue.clone()
    loss = module.training_step({"image": image, "saliency": sal}, 0)
    # Recompute by hand: per-pixel -log softmax at the own prototype, weighted mean over pixels.
    module.queue.queue.copy_(queue)
    with torch.no_grad():
        view = module.augment(image)  # deterministic without jitter (clamps to the valid range)
        query = module.embed(view)[0]
        protos, _ = module.key_prototypes(view, sal)
        nll = []
        for b in range(2):
            pix = query[b].permute(1, 2, 0)[sal[b] == 1]
            logits = torch.cat([pix @ protos.t(), pix @ queue.t()], 1) / module.temperature
            nll.append(-logits.log_softmax(1)[:, b])
        w = [1 / math.log(1.02 + 192 / 208), 1 / math.log(1.02 + 16 / 208)]
        expected = (w[0] * nll[0].sum() + w[1] * nll[1].sum()) / (192 * w[0] + 16 * w[1])
    assert torch.allclose(loss.detach(), expected, atol=1e-5)


def test_balanced_bce_matches_hand_formula() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0, 5.0]])
    target = torch.tensor([[1, 0, 0, 255]])
    # n = 3 labelled; positive weight n_neg/n = 2/3, negative weight n_pos/n = 1/3
    bce = [math.log(2.0), math.log(1 + math.exp(2.0)), math.log(1 + math.exp(-1.0))]
    expected = (2 / 3 * bce[0] + 1 / 3 * bce[1] + 1 / 3 * bce[2]) / 3
    assert balanced_bce(logits, target).item() == pytest.approx(expected, rel=1e-6)
    zero = balanced_bce(logits.requires_grad_(), torch.full_like(target, 255))
    assert zero.item() == 0.0 and zero.requires_grad


def test_queue_is_fifo_with_wrap_around() -> None:
    queue = PrototypeQueue(size=3, dim=1)
    queue.enqueue(torch.tensor([[1.0], [2.0]]))
    queue.enqueue(torch.tensor([[3.0], [4.0]]))
    assert queue.queue.flatten().tolist() == [4.0, 2.0, 3.0] and int(queue.pointer) == 1
    queue.enqueue(torch.arange(5.0, 10.0).view(5, 1))  # more than K: keep the newest K
    assert sorted(queue.queue.flatten().tolist()) == [7.0, 8.0, 9.0]


def test_transform_redraws_crops_without_foreground() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    sal = np.zeros((64, 64), np.uint8)
    sal[40:50, 40:50] = 1  # 2.4% of the image: many small crops miss it
    transform = MaskContrastTransform(crop_size=32, scale=(0.05, 0.1), max_attempts=50)
    torch.manual_seed(0)
    fractions = [
        foreground_fraction(transform({"image": image, "saliency": sal})["saliency"]) for _ in range(10)
    ]
    assert all(0.01 < f < 0.99 for f in fractions)
    plain = MaskContrastTransform(crop_size=32, scale=(0.05, 0.1), max_attempts=1)
    torch.manual_seed(0)
    assert any(
        foreground_fraction(plain({"image": image, "saliency": sal})["saliency"]) == 0 for _ in range(10)
    )
    with pytest.raises(KeyError, match="prior"):
        MaskContrastTransform(saliency_key="prior")({"image": image, "saliency": sal})


def test_transform_draws_independent_key_view() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    sal = np.zeros((48, 48), np.uint8)
    sal[10:30, 5:40] = 1
    transform = MaskContrastTransform(crop_size=24, scale=(0.2, 0.5))
    torch.manual_seed(0)
    outs = [transform({"image": image, "saliency": sal}) for _ in range(5)]
    for out in outs:
        assert out["image2"].shape == (3, 24, 24) and out["saliency2"].shape == (24, 24)
        assert 0.01 < foreground_fraction(out["saliency2"].numpy()) < 0.99
    # own crops: the key view differs from the query view (in at least one of 5 draws)
    assert any(not torch.equal(normalize(o["image"]), o["image2"]) for o in outs)
    shared = MaskContrastTransform(crop_size=24, scale=(0.2, 0.5), independent_views=False)
    assert "image2" not in shared({"image": image, "saliency": sal})


def test_key_view_and_its_mask_make_the_prototypes() -> None:
    module = tiny_module(momentum=0.0)
    module.augment = PhotometricAugment(jitter_p=0.0, gray_p=0.0)
    image, key_image = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    sal = torch.zeros(2, 16, 16, dtype=torch.long)
    sal[:, :8] = 1
    key_sal = torch.zeros(2, 16, 16, dtype=torch.long)
    key_sal[0, 8:] = 1  # image 1's key view has no foreground: no prototype, no query pixel
    module.train()
    loss = module.training_step({"image": image, "saliency": sal, "image2": key_image, "saliency2": key_sal}, 0)
    assert torch.isfinite(loss)
    assert int(module.queue.pointer) == 1
    expected, _ = module.key_prototypes(module.augment(key_image), key_sal)
    assert torch.allclose(module.queue.queue[0], expected[0], atol=1e-5)


@pytest.mark.parametrize("gather", [True, False])
def test_gather_prototypes_option_picks_the_candidates(gather: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import usgs.methods.maskcontrast as mc

    # Simulate a second process (rank 1) whose 2 images come first in the gathered batch.
    other = F.normalize(torch.ones(2, 8), dim=1)
    monkeypatch.setattr(mc, "all_gather_cat", lambda x: torch.cat([x.new_ones(2, *x.shape[1:]) if x.dim() == 1
                                                                   else other.to(x.dtype), x]))
    monkeypatch.setattr(mc, "gathered_offset", lambda n, device: 2)
    seen = {}
    real = mc.contrastive_logits

    def spy(query, saliency, prototypes, valid, queue, temperature, offset):
        seen.update(n=prototypes.shape[0], offset=offset)
        return real(query, saliency, prototypes, valid, queue, temperature, offset)

    monkeypatch.setattr(mc, "contrastive_logits", spy)
    module = tiny_module(gather_prototypes=gather)
    sal = torch.zeros(3, 16, 16, dtype=torch.long)
    sal[:, :8] = 1
    module.train()
    module.training_step({"image": torch.randn(3, 3, 16, 16), "saliency": sal}, 0)
    # gathered: 2 + 3 candidates, own images from row 2; the original's: its own 3 from row 0
    assert seen == ({"n": 5, "offset": 2} if gather else {"n": 3, "offset": 0})
    assert int(module.queue.pointer) == 5  # the queue receives every process's prototypes either way


def test_photometric_augment_identity_and_grayscale() -> None:
    torch.manual_seed(0)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    image = (torch.rand(3, 3, 8, 8) - mean) / std  # a valid normalised image
    assert torch.allclose(PhotometricAugment(jitter_p=0.0, gray_p=0.0)(image), image, atol=1e-5)
    jittered = PhotometricAugment(jitter_p=1.0, gray_p=0.0)(image)
    assert not torch.allclose(jittered, image, atol=1e-3)
    rgb = jittered * std + mean
    assert float(rgb.min()) >= -1e-5 and float(rgb.max()) <= 1 + 1e-5
    gray = PhotometricAugment(jitter_p=0.0, gray_p=1.0)(image)
    rgb = gray * std + mean
    assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1e-5) and torch.allclose(rgb[:, 1], rgb[:, 2], atol=1e-5)


def test_training_step_updates_key_encoder_and_queue() -> None:
    module = tiny_module(momentum=0.0)  # key encoder becomes a copy of the query encoder
    module.augment = PhotometricAugment(jitter_p=0.0, gray_p=0.0)
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(0.1)
    image = torch.randn(3, 3, 16, 16)
    sal = torch.zeros(3, 16, 16, dtype=torch.long)
    sal[0, :8] = 1
    sal[1, 4:12, 4:12] = 1  # image 2 has no foreground: not a prototype, no query pixel
    module.train()
    loss = module.training_step({"image": image, "saliency": sal}, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    for k, q in zip(module.key_net.parameters(), module.net.parameters()):
        assert torch.equal(k, q)
    assert int(module.queue.pointer) == 2
    expected, valid = module.key_prototypes(module.augment(image), sal)
    assert valid.tolist() == [True, True, False]
    # BN in train mode: the same batch gives the same key prototypes again
    assert torch.allclose(module.queue.queue[:2], expected[:2], atol=1e-5)


def test_frozen_stages_and_predict_range() -> None:
    module = tiny_module(frozen_stages=2)
    assert not any(p.requires_grad for p in module.net.backbone.conv1.parameters())
    assert not any(p.requires_grad for p in module.net.backbone.layer1.parameters())
    assert all(p.requires_grad for p in module.net.backbone.layer2.parameters())
    module.train()
    assert not module.net.backbone.bn1.training and module.net.backbone.layer2.training
    # the key encoder's frozen stages stay in eval mode too (original: freeze_layers on model_k)
    assert not module.key_net.backbone.bn1.training and not module.key_net.backbone.layer1.training
    assert module.key_net.backbone.layer2.training
    running = module.key_net.backbone.bn1.running_mean.clone()
    module.key_prototypes(torch.randn(2, 3, 16, 16), torch.ones(2, 16, 16, dtype=torch.long))
    assert torch.equal(module.key_net.backbone.bn1.running_mean, running)
    trainable = {id(p) for g in module.param_groups() for p in g["params"]}
    assert not trainable & {id(p) for p in module.key_net.parameters()}
    module.eval()
    pred = module.predict(torch.randn(2, 3, 16, 16))
    assert pred.shape == (2, 16, 16) and pred.dtype == torch.long
    assert int(pred.min()) >= 0 and int(pred.max()) < module.num_classes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, port: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(rank)
    local = torch.full((rank + 1, 2), float(rank))  # unequal sizes: 1 row on rank 0, 2 on rank 1
    gathered = all_gather_cat(local)
    offset = gathered_offset(local.shape[0], local.device)
    x = torch.arange(4.0).view(2, 2) + 10 * rank
    shuffled, restore = shuffle_batch(x)
    roundtrip = unshuffle_batch(shuffled * 2, restore)
    queue.put((rank, gathered.tolist(), offset, torch.equal(roundtrip, x * 2), shuffled.tolist()))
    dist.destroy_process_group()


def test_gathers_across_two_cpu_processes() -> None:
    ctx = mp.get_context("fork")  # fork: the workers need no re-import of the test module
    queue = ctx.Queue()
    mp.start_processes(_gather_worker, args=(_free_port(), queue), nprocs=2, start_method="fork")
    results = {r[0]: r for r in (queue.get(timeout=60) for _ in range(2))}
    for rank in (0, 1):
        assert results[rank][1] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
        assert results[rank][3]  # unshuffle inverts shuffle
    assert results[0][2] == 0 and results[1][2] == 1
    rows = sorted(map(tuple, results[0][4] + results[1][4]))  # shuffle is a permutation of the global batch
    assert rows == [(0.0, 1.0), (2.0, 3.0), (10.0, 11.0), (12.0, 13.0)]


def test_loss_decreases_on_a_fixed_batch() -> None:
    module = tiny_module(momentum=0.9, temperature=0.5)
    module.augment = PhotometricAugment(jitter_p=0.0, gray_p=0.0)
    image = torch.randn(4, 3, 16, 16)
    sal = torch.zeros(4, 16, 16, dtype=torch.long)
    for b in range(4):
        sal[b, 2 * b : 2 * b + 6, 3:11] = 1
    optimizer = torch.optim.SGD(
        [p for g in module.param_groups() for p in g["params"]], lr=0.05, momentum=0.9
    )
    module.train()
    losses = []
    for step in range(12):
        module.queue.queue.copy_(
            F.normalize(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)), dim=1)
        )
        loss = module.training_step({"image": image, "saliency": sal}, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3



class _SwapImages(SegmentationDataset):
    """Constant images whose value is their index; only image 1 has foreground (its top half)."""

    def __init__(self, transform, good=(1,), n: int = 3) -> None:
        super().__init__(num_classes=2, transform=transform)
        self.ids = [f"img{i}" for i in range(n)]
        self.good = set(good)
        self.loaded: list[int] = []

    def load(self, index: int) -> dict[str, np.ndarray]:
        self.loaded.append(index)
        sal = np.zeros((8, 8), np.uint8)
        if index in self.good:
            sal[:4] = 1  # fraction 0.5 under any flip
        image = np.full((8, 8, 3), 10 * index, np.uint8)
        return {"image": image, "saliency": sal, "labels": np.zeros(2, np.float32)}


def _identity_crops(**kwargs) -> MaskContrastTransform:
    # scale 1 + crop = image size: every draw is the whole image (flipped or not), so only the image
    # decides whether a draw passes the foreground range
    return MaskContrastTransform(crop_size=8, scale=(1.0, 1.0), resized_crop=False, **kwargs)


def test_swap_after_replaces_an_image_that_keeps_failing_like_the_original() -> None:
    data = _SwapImages(_identity_crops(swap_after=3))
    draws: list[int] = []
    transform = data.transform
    real_draw = transform._draw
    transform._draw = lambda sample, attempts, keep_last: (  # record (image, attempts) of each call
        draws.append((int(sample["image"][0, 0, 0]) // 10, attempts)) or real_draw(sample, attempts, keep_last))
    before = torch.random.get_rng_state()
    out = data[(0, 1234)]
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's stream is untouched
    # DatasetKeyQuery: 3 draws of the image itself, then one draw per swapped-in image until one passes
    assert draws[0] == (0, 3)
    assert all(attempts == 1 for _, attempts in draws[1:]) and draws[-1][0] == 1
    assert 1 not in [img for img, _ in draws[1:-1]] and len(draws) >= 2
    assert out["index"] == 1 and out["name"] == "img1"
    assert torch.allclose(out["image"], normalize(np.full((8, 8, 3), 10, np.uint8)))
    assert out["saliency"].float().mean() == 0.5 and out["saliency2"].float().mean() == 0.5
    first = list(draws)
    draws.clear()
    data[(0, 1234)]
    assert draws == first  # the swap is drawn from the sample's seed: same seed, same images
    # a passing image is never swapped
    draws.clear()
    assert data[(1, 5)]["index"] == 1 and draws == [(1, 3)]


def test_without_swap_after_the_crops_are_kept_and_no_image_is_swapped() -> None:
    data = _SwapImages(_identity_crops(max_attempts=4))
    out = data[(0, 7)]
    assert out["index"] == 0 and data.loaded == [0]
    assert out["saliency"].sum() == 0  # kept although out of range


def test_swap_gives_up_with_a_clear_error_when_no_image_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _SwapImages(_identity_crops(swap_after=3), good=())
    monkeypatch.setattr(_SwapImages, "max_swaps", 5)
    with pytest.raises(RuntimeError, match="rejected 5 swapped-in images after sample 'img2'"):
        data[(2, 0)]
    assert len(data.loaded) == 6
    with pytest.raises(ValueError, match="swap_after"):
        _identity_crops(swap_after=0)
