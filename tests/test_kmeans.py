"""Tests for the suite's torch k-means (usgs.nets.kmeans)."""

from __future__ import annotations

import pytest
import torch

from usgs.nets.kmeans import _estep, assign, kmeans


def _blobs(k: int = 4, per: int = 150, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 20.0
    x = centres[:, None] + torch.randn(k, per, d, generator=g)
    return x.reshape(-1, d), torch.arange(k).repeat_interleave(per)


def _is_permutation(true: torch.Tensor, pred: torch.Tensor, k: int) -> bool:
    table = torch.bincount(true * k + pred, minlength=k * k).view(k, k)
    # each true cluster maps to exactly one predicted cluster and vice versa
    return bool(((table > 0).sum(0) == 1).all() and ((table > 0).sum(1) == 1).all())


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_recovers_blobs_up_to_permutation(init: str) -> None:
    x, true = _blobs()
    res = kmeans(x, 4, init=init, generator=torch.Generator().manual_seed(3))  # type: ignore[arg-type]
    assert res.labels.shape == (600,) and res.labels.dtype == torch.int64
    assert res.centers.shape == (4, 6)
    assert _is_permutation(true, res.labels, 4)
    # inertia equals the hand-computed sum of squared distances to the assigned centres
    manual = ((x - res.centers[res.labels]) ** 2).sum()
    torch.testing.assert_close(res.inertia, manual, rtol=1e-4, atol=1e-2)
    # centres are the means of their clusters (Lloyd fixed point)
    for j in range(4):
        torch.testing.assert_close(res.centers[j], x[res.labels == j].mean(0), rtol=1e-4, atol=1e-4)


def assert_equal_up_to_ties(x: torch.Tensor, centers: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                            rtol: float = 1e-4) -> None:
    """Assignments ``a`` and ``b`` of points ``x`` [...,N,D] to ``centers`` [...,K,D] agree, except where a
    point is (within ``rtol`` of its squared distance) as near to both centres: a near tie that another
    BLAS, thread count or CPU may break the other way. A real disagreement fails."""
    d = ((x.double().unsqueeze(-2) - centers.double().unsqueeze(-3)) ** 2).sum(-1)  # [...,N,K]
    da, db = d.gather(-1, a.unsqueeze(-1)).squeeze(-1), d.gather(-1, b.unsqueeze(-1)).squeeze(-1)
    differ = a != b
    tie = (da - db).abs() <= rtol * torch.maximum(da, db).clamp_min(1e-12)
    assert not (differ & ~tie).any(), f"{int((differ & ~tie).sum())} assignments differ beyond a near tie"
    assert differ.float().mean() < 0.01  # ties are rare: most assignments are equal


def test_equal_up_to_ties_fails_on_a_real_difference() -> None:
    x, c = torch.tensor([[0.0]] * 199 + [[0.5]]), torch.tensor([[0.0], [1.0]])
    same = torch.zeros(200, dtype=torch.long)
    assert_equal_up_to_ties(x, c, same, torch.cat([same[:-1], torch.ones(1, dtype=torch.long)]))  # 0.5: a tie
    with pytest.raises(AssertionError, match="beyond a near tie"):
        assert_equal_up_to_ties(x, c, same, torch.cat([torch.ones(1, dtype=torch.long), same[1:]]))


def test_deterministic_with_generator_and_seed_matters() -> None:
    x = torch.randn(2000, 3, generator=torch.Generator().manual_seed(1))
    a = kmeans(x, 8, generator=torch.Generator().manual_seed(7))
    b = kmeans(x, 8, generator=torch.Generator().manual_seed(7))
    c = kmeans(x, 8, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)
    assert not torch.equal(a.centers, c.centers)


def test_batched_equals_per_item_and_chunking_is_invisible() -> None:
    items = [_blobs(seed=s)[0] for s in range(3)]
    x = torch.stack(items)  # [3,600,6]
    init = torch.stack([it[torch.tensor([0, 150, 300, 450]) + 5] for it in items])
    batched = kmeans(x, 4, init=init)
    chunked = kmeans(x, 4, init=init, chunk_size=7)
    assert batched.labels.shape == (3, 600) and batched.inertia.shape == (3,)
    for i, item in enumerate(items):
        single = kmeans(item, 4, init=init[i])
        assert_equal_up_to_ties(item, single.centers, single.labels, batched.labels[i])
        torch.testing.assert_close(single.centers, batched.centers[i])
    assert_equal_up_to_ties(x, batched.centers, chunked.labels, batched.labels)
    torch.testing.assert_close(chunked.centers, batched.centers)


def test_empty_cluster_reseeded_from_farthest_point() -> None:
    # two tight groups and one far outlier; centre 2 starts far from everything -> empty at step 1
    x = torch.tensor([[0.0], [0.1], [10.0], [10.1], [100.0]])
    init = torch.tensor([[0.0], [10.0], [-1000.0]])
    res = kmeans(x, 3, init=init, iters=5)
    # the empty centre is re-seeded on the farthest point (100), which then forms its own cluster
    assert res.labels.tolist() == [0, 0, 1, 1, 2]
    torch.testing.assert_close(res.centers[:, 0], torch.tensor([0.05, 10.05, 100.0]))
    assert float(res.inertia) == pytest.approx(4 * 0.05**2, abs=1e-5)


def test_assign_matches_bruteforce_and_errors() -> None:
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 500, 4, generator=g), torch.randn(2, 7, 4, generator=g)
    brute = torch.cdist(x, c).argmin(-1)
    assert_equal_up_to_ties(x, c, assign(x, c, chunk_size=33), brute)
    assert_equal_up_to_ties(x[0], c[0], assign(x[0], c[0]), brute[0])
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x[0], 501)
    with pytest.raises(ValueError, match="unknown k-means init"):
        kmeans(x[0], 3, init="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="do not match"):
        assign(x, c[:1])


def test_integer_input_and_large_n_subsampled_seeding() -> None:
    x, true = _blobs(k=3, per=400, d=2)
    res = kmeans(
        (x * 10).round().to(torch.int32), 3, generator=torch.Generator().manual_seed(0), init_max_points=50
    )
    assert res.centers.dtype == torch.float32
    assert _is_permutation(true, res.labels, 3)


def test_fewer_distinct_points_than_clusters_stays_finite() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]).repeat(20, 1)
    res = kmeans(x, 5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.centers).all() and float(res.inertia) == pytest.approx(0.0, abs=1e-6)
    assert set(res.labels.tolist()) <= set(range(5)) and len(set(res.labels.tolist())) == 3


def test_gpu_onehot_centre_sums_equal_cpu_index_add() -> None:
    # The CUDA path sums centres with a one-hot matmul; run it on CPU against index_add_.
    g = torch.Generator().manual_seed(3)
    x, c = (
        torch.randn(2, 700, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 6, 5, generator=g, dtype=torch.float64),
    )
    x2 = (x * x).sum(-1)
    lab_a, mind_a, sums_a, counts_a = _estep(x, x2, c, 128, accumulate=True, onehot_sums=True)
    lab_b, mind_b, sums_b, counts_b = _estep(x, x2, c, 128, accumulate=True, onehot_sums=False)
    brute = torch.cdist(x, c)
    assert_equal_up_to_ties(x, c, lab_a, brute.argmin(-1), rtol=1e-9)
    assert_equal_up_to_ties(x, c, lab_a, lab_b, rtol=1e-9)
    torch.testing.assert_close(mind_a, brute.min(-1).values ** 2)
    torch.testing.assert_close(sums_a, sums_b)
    assert torch.equal(counts_a, counts_b) and counts_a.sum().item() == 2 * 700
    manual = torch.stack([torch.stack([x[i][lab_a[i] == j].sum(0) for j in range(6)]) for i in range(2)])
    torch.testing.assert_close(sums_a, manual)
