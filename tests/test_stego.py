"""STEGO: the pair term against explicit loops, the sampling pieces, the kNN search, the crops, the head."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from usgs.methods.stego import correlation_loss
from usgs.methods.stego_data import five_crops, frozen_features, knn_chunked, resize_center_crop
from usgs.methods.stego_loss import derangement, sample_at
from usgs.nets.stego_head import ClusterLookup, StegoHead
from usgs.nets.vit import vit


def loop_reference(f1, f2, c1, c2, shift, pointwise, zero_clamp, stabilize):
    """STEGO's helper (modules.py:325-347) spelled out in float64 numpy, one location pair at a time:
    L2-normalise each location's vector, take the dot products, centre fd over the second image's
    locations and add back the mean it removed, clamp cd, multiply."""
    b, _, h, w = f1.shape
    _, _, h2, w2 = f2.shape

    def unit(v):
        return v / max(np.sqrt((v * v).sum()), 1e-10)

    fd = np.zeros((b, h, w, h2, w2))
    cd = np.zeros((b, h, w, h2, w2))
    for n, y, x, i, j in itertools.product(range(b), range(h), range(w), range(h2), range(w2)):
        fd[n, y, x, i, j] = (unit(f1[n, :, y, x]) * unit(f2[n, :, i, j])).sum()
        cd[n, y, x, i, j] = (unit(c1[n, :, y, x]) * unit(c2[n, :, i, j])).sum()
    if pointwise:
        old_mean = fd.sum() / fd.size
        centred = np.zeros_like(fd)
        for n, y, x in itertools.product(range(b), range(h), range(w)):
            centred[n, y, x] = fd[n, y, x] - fd[n, y, x].sum() / (h2 * w2)
        fd = centred - centred.sum() / centred.size + old_mean
    low = 0.0 if zero_clamp else -9999.0
    clamped = np.zeros_like(cd)
    for index in np.ndindex(cd.shape):
        value = max(cd[index], low)
        clamped[index] = min(value, 0.8) if stabilize else value
    return -clamped * (fd - shift), cd


@pytest.mark.parametrize("pointwise,zero_clamp,stabilize", [(True, True, False), (False, True, False),
                                                            (True, False, False), (True, True, True)])
def test_correlation_loss_matches_loops(pointwise: bool, zero_clamp: bool, stabilize: bool) -> None:
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(2, 5, 2, 3)), rng.normal(size=(2, 5, 3, 2))
    c1, c2 = rng.normal(size=(2, 4, 2, 3)), rng.normal(size=(2, 4, 3, 2))
    f1[0, :, 0, 0] = 0.0  # a zero vector: the eps of the normalisation keeps it finite (all zero)
    expected_loss, expected_cd = loop_reference(f1, f2, c1, c2, 0.2, pointwise, zero_clamp, stabilize)
    t = [torch.tensor(a, dtype=torch.float64) for a in (f1, f2, c1, c2)]
    loss, cd = correlation_loss(*t, 0.2, pointwise=pointwise, zero_clamp=zero_clamp, stabilize=stabilize)
    assert loss.shape == cd.shape == (2, 2, 3, 3, 2)
    np.testing.assert_allclose(cd.numpy(), expected_cd, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss.numpy(), expected_loss, rtol=1e-10, atol=1e-12)
    assert (expected_cd < 0).any(), "the input should exercise the zero clamp"


def test_gradient_flows_into_codes_only_and_not_through_the_clamp() -> None:
    torch.manual_seed(0)
    f1, f2 = torch.randn(1, 6, 2, 2, requires_grad=True), torch.randn(1, 6, 2, 2, requires_grad=True)
    c1, c2 = torch.randn(1, 3, 2, 2, requires_grad=True), torch.randn(1, 3, 2, 2)
    loss, cd = correlation_loss(f1, f2, c1, c2, 0.1)
    loss.sum().backward()
    assert f1.grad is None and f2.grad is None  # the frozen features carry no gradient (torch.no_grad)
    assert c1.grad is not None and c1.grad.abs().sum() > 0
    # where every pair of one location of c1 has cd < 0 the clamp at 0 gives it no gradient
    negative = (cd[0] < 0).flatten(2).all(-1)
    for y, x in negative.nonzero().tolist():
        assert torch.all(c1.grad[0, :, y, x] == 0)


def test_sample_at_reads_corners_and_derangement_has_no_fixed_point() -> None:
    t = torch.arange(12.0).view(1, 1, 3, 4)
    coords = torch.tensor([[[[-1.0, -1.0], [1.0, 1.0]]]])  # (x, y): top-left, bottom-right
    assert sample_at(t, coords).flatten().tolist() == [0.0, 11.0]
    g = torch.Generator().manual_seed(0)
    for size in (2, 3, 7):
        for _ in range(20):
            perm = derangement(size, g)
            assert perm.min() >= 0 and perm.max() < size  # like super_perm, not always a permutation
            assert not torch.any(perm == torch.arange(size))


def test_knn_chunked_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    expected = np.argsort(-(x @ x.T), axis=1, kind="stable")[:, :10]
    got = knn_chunked(x, 10, block=5)  # tiles of 5 x 5: running top-k across 8 blocks
    np.testing.assert_array_equal(got, expected)
    assert (got[:, 0] == np.arange(37)).all()  # itself first, as STEGO's positive draw assumes


def test_five_crops_and_resize_center_crop() -> None:
    image = np.arange(8 * 6).reshape(8, 6).astype(np.uint8)
    crops = five_crops(image, 0.5)
    assert [c.shape for c in crops] == [(4, 3)] * 5
    assert crops[0][0, 0] == image[0, 0] and crops[1][0, -1] == image[0, -1]
    assert crops[2][-1, 0] == image[-1, 0] and crops[3][-1, -1] == image[-1, -1]
    assert crops[4][0, 0] == image[2, 2]  # centre: round((8-4)/2), round((6-3)/2) = 2, 2 (torchvision)
    out = resize_center_crop(np.zeros((30, 60, 3), np.uint8), 20)
    assert out.shape == (20, 20, 3)


def test_dinov2_patch14_features_at_320() -> None:
    net = vit("vit_small_patch14_dinov2").eval()
    with torch.no_grad():
        feats = frozen_features(net, torch.randn(1, 3, 320, 320))
    assert feats.shape == (1, 384, 23, 23)  # 320 -> 322 = 23 x 14 px


def test_head_and_cluster_probe() -> None:
    torch.manual_seed(0)
    head = StegoHead(8, 5).eval()
    feats, code = head(torch.randn(2, 8, 3, 3))
    assert feats.shape == (2, 8, 3, 3) and code.shape == (2, 5, 3, 3)
    probe = ClusterLookup(5, 4)
    loss, probs = probe(code, None)
    assert torch.equal(probs.sum(1), torch.ones(2, 3, 3)) and set(probs.unique().tolist()) == {0.0, 1.0}
    inner = probe.inner_products(code)
    assert torch.allclose(loss, -inner.max(1).values.mean())
    assert torch.allclose(probe.log_probs(code, 2.0).exp().sum(1), torch.ones(2, 3, 3))



def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (ended, waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone, or gone while being read
        return False
    return state != "Z"


def test_worker_pool_times_out_and_kills_its_workers() -> None:
    import math
    import time

    from usgs.priors.processes import WorkerPool

    pool = WorkerPool(1)  # builtins as the work: the spawned worker imports nothing of the suite
    assert pool.map(math.sqrt, [4.0, 9.0]) == [2.0, 3.0]  # results in order
    worker = next(iter(pool._pool._processes.values()))  # type: ignore[union-attr]
    with pytest.raises(TimeoutError, match="took over 1.0 s"):
        pool.map(time.sleep, [60.0], timeout=1.0)  # a stuck item: STEGO's CRF pool hang (issue #16)
    # killed, not left running. Asked of the OS by pid: the executor's management thread may reap the
    # process first, and then multiprocessing's own is_alive() never learns that it ended.
    deadline = time.monotonic() + 10
    while _running(worker.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(worker.pid)
    assert WorkerPool(0).map(math.sqrt, [16.0]) == [4.0]  # in-process
