"""SegmentationMetric against hand-computed confusion matrices, permutations and 2 processes."""

from __future__ import annotations

import itertools
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from usgs.metrics import SegmentationMetric, match_clusters, scores_from_confmat


def test_hand_computed_iou_and_accuracy() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    preds = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    m = SegmentationMetric(num_classes=3)
    m.update(preds[None], target[None])
    out = m.compute()
    # class 0: TP 1, FP 1 (pixel (1,1)), FN 1 -> 1/3; class 1: TP 2, FP 1, FN 1 -> 2/4;
    # class 2: TP 1, FP 1 (pixel (1,3)), FN 1 -> 1/3. The ignored pixel (1,2) counts nowhere.
    assert torch.allclose(out["iou"], torch.tensor([1 / 3, 2 / 4, 1 / 3], dtype=torch.float64))
    assert math.isclose(float(out["miou"]), (1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert math.isclose(float(out["pixel_accuracy"]), 4 / 7)
    assert m.confmat.sum() == 7


def test_logits_are_argmaxed_and_absent_class_is_nan() -> None:
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 0] = 1.0
    out = SegmentationMetric(num_classes=3)(logits, target)
    assert float(out["miou"]) == 1.0
    assert torch.isnan(out["iou"][1:]).all()


def test_hungarian_recovers_a_known_permutation() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 16, 16), generator=g)
    permutation = torch.tensor([2, 0, 3, 1])  # cluster id of each class
    clusters = permutation[target]
    m = SegmentationMetric(num_classes=4, matching="hungarian")
    m.update(clusters, target)
    out = m.compute()
    assert float(out["miou"]) == 1.0
    assert out["mapping"][permutation].tolist() == [0, 1, 2, 3]
    plain = SegmentationMetric(num_classes=4)(clusters, target)
    assert float(plain["miou"]) < 0.5


def test_majority_vote_with_more_clusters_than_classes() -> None:
    # rows = clusters (4), columns = classes (2)
    confmat = torch.tensor([[5, 1], [4, 0], [0, 7], [2, 3]])
    mapping = match_clusters(confmat, "majority")
    assert mapping.tolist() == [0, 0, 1, 1]
    out = scores_from_confmat(confmat, "majority")
    # class 0: TP 9, predicted 10, actual 11 -> 9/12; class 1: TP 10, predicted 12, actual 11 -> 10/13
    assert torch.allclose(out["iou"], torch.tensor([9 / 12, 10 / 13], dtype=torch.float64))
    hungarian = scores_from_confmat(confmat, "hungarian")
    assert (hungarian["mapping"] >= 0).sum() == 2  # two clusters stay unmatched
    assert hungarian["mapping"].tolist() == [0, -1, 1, -1]


def test_hungarian_iou_maximises_the_summed_iou() -> None:
    # rows = clusters, columns = classes; here the count and the IoU optimum differ
    confmat = torch.tensor([[2, 0, 0], [8, 4, 1], [9, 1, 9]])
    rows, cols = confmat.sum(1).tolist(), confmat.sum(0).tolist()

    def iou(k: int, c: int) -> float:  # n_kc / (n_k. + n_.c - n_kc), written out
        n = int(confmat[k, c])
        return n / (rows[k] + cols[c] - n)

    perms = list(itertools.permutations(range(3)))
    best_iou = max(perms, key=lambda p: sum(iou(k, p[k]) for k in range(3)))
    best_count = max(perms, key=lambda p: sum(int(confmat[k, p[k]]) for k in range(3)))
    assert best_iou != best_count
    assert match_clusters(confmat, "hungarian_iou").tolist() == list(best_iou)
    assert match_clusters(confmat, "hungarian").tolist() == list(best_count)
    metric = SegmentationMetric(3, matching="hungarian_iou")
    metric.confmat += confmat
    assert metric.compute()["mapping"].tolist() == list(best_iou)


def test_bad_inputs_raise_clear_errors() -> None:
    m = SegmentationMetric(num_classes=2)
    with pytest.raises(ValueError, match="class id 5"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 5))
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="hungarian"):
        SegmentationMetric(num_classes=2, num_predictions=3)
    with pytest.raises(ValueError, match="valid"):
        SegmentationMetric(num_classes=2, matching="best")  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, preds: torch.Tensor, target: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    m = SegmentationMetric(num_classes=5, matching="hungarian")
    m.update(preds[rank::2], target[rank::2])  # each process sees half of the batch
    result = m.compute()
    if rank == 0:
        out["miou"] = float(result["miou"])
        out["iou"] = result["iou"].clone()
        out["local_pixels"] = int(m.confmat.sum())  # compute() syncs, then restores the local state
    dist.destroy_process_group()


def test_two_processes_equal_one() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (6, 8, 8), generator=g)
    target[0, :2] = 255
    preds = torch.where(
        torch.rand(6, 8, 8, generator=g) < 0.7, (target + 1) % 5, torch.randint(0, 5, (6, 8, 8), generator=g)
    )
    single = SegmentationMetric(num_classes=5, matching="hungarian")
    single.update(preds, target)
    expected = single.compute()
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(_free_port(), preds, target, out), nprocs=2, join=True)
    assert torch.allclose(out["iou"], expected["iou"], equal_nan=True)
    assert out["local_pixels"] < int(single.confmat.sum())  # rank 0 really saw only part of the data
    assert out["miou"] == pytest.approx(float(expected["miou"]), abs=1e-12)
