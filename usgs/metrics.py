"""The suite's one segmentation metric: a DDP-safe confusion matrix with cluster-to-class matching.

Every mIoU in usgs (training, evaluation, prior reports) comes from :class:`SegmentationMetric`, so
numbers of different methods are comparable. Cluster outputs are matched to classes by the
Hungarian algorithm (clusters = classes, as in STEGO / PiCIE / MaskContrast) on the pixel counts
("hungarian": maximises the matched pixels) or on the cluster-class IoU matrix ("hungarian_iou":
maximises the summed IoU, MaskContrast's ``_hungarian_match(metric='iou')`` in
``segmentation/utils/kmeans_utils.py``), or by majority vote (clusters > classes, each cluster takes
its most frequent class).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric

Matching = Literal["none", "hungarian", "hungarian_iou", "majority"]
MATCHINGS: tuple[str, ...] = ("none", "hungarian", "hungarian_iou", "majority")


def iou_matrix(confmat: Tensor) -> Tensor:
    """IoU of every (prediction id k, class c) pair from a ``[K, C]`` count matrix:
    ``n_kc / (n_k. + n_.c - n_kc)``, 0 where both are empty."""
    confmat = confmat.double()
    union = confmat.sum(1, keepdim=True) + confmat.sum(0, keepdim=True) - confmat
    return torch.where(union > 0, confmat / union.clamp(min=1), torch.zeros_like(confmat))


def match_clusters(confmat: Tensor, matching: Matching) -> Tensor:
    """Map each prediction id to a class id from a ``[K predictions, C classes]`` count matrix.

    Returns int64 ``[K]``; ``-1`` marks a prediction matched to no class (Hungarian with K > C),
    whose pixels then count as errors.
    """
    k, c = confmat.shape
    if matching == "none":
        if k != c:
            raise ValueError(f"matching='none' needs as many predictions as classes, got {k} and {c}")
        return torch.arange(k)
    if matching == "majority":
        return confmat.argmax(dim=1).cpu()
    if matching in ("hungarian", "hungarian_iou"):
        gain = iou_matrix(confmat) if matching == "hungarian_iou" else confmat.double()
        rows, cols = linear_sum_assignment(gain.cpu().numpy(), maximize=True)
        mapping = np.full(k, -1, dtype=np.int64)
        mapping[rows] = cols
        return torch.from_numpy(mapping)
    raise ValueError(f"Unknown matching {matching!r}; valid: {', '.join(MATCHINGS)}")


def scores_from_confmat(confmat: Tensor, matching: Matching = "none") -> dict[str, Tensor]:
    """mIoU, pixel accuracy, per-class IoU and the mapping from a ``[K, C]`` confusion matrix.

    IoU of class c = TP / (TP + FP + FN) after mapping; classes absent from both prediction and
    ground truth get NaN and are left out of the mean.
    """
    confmat = confmat.double()
    num_classes = confmat.shape[1]
    mapping = match_clusters(confmat, matching).to(confmat.device)
    onehot = torch.zeros(confmat.shape[0], num_classes, dtype=confmat.dtype, device=confmat.device)
    matched = mapping >= 0
    onehot[matched.nonzero().squeeze(1), mapping[matched]] = 1.0
    mapped = onehot.T @ confmat  # [C predicted class, C true class]
    tp = mapped.diagonal()
    predicted = mapped.sum(dim=1)
    actual = confmat.sum(dim=0)
    union = predicted + actual - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    total = confmat.sum()
    return {
        "miou": iou.nanmean() if bool((union > 0).any()) else torch.tensor(float("nan")),
        "pixel_accuracy": tp.sum() / total if total > 0 else torch.tensor(float("nan")),
        "iou": iou,
        "mapping": mapping,
    }


class SegmentationMetric(Metric):
    """Confusion matrix of predictions vs ground truth, summed over processes (torchmetrics).

    ``update(preds, target)``: preds int64 ``[B,H,W]`` ids in ``[0, num_predictions)`` or logits
    ``[B,K,H,W]`` (argmaxed); target int64 ``[B,H,W]`` with ``ignore_index`` for void pixels.
    ``compute() -> {"miou", "pixel_accuracy", "iou" [C], "mapping" [K]}``.
    """

    full_state_update = False
    confmat: Tensor

    def __init__(self, num_classes: int, num_predictions: int | None = None, matching: Matching = "none",
                 ignore_index: int = 255) -> None:
        super().__init__()
        if matching not in MATCHINGS:
            raise ValueError(f"Unknown matching {matching!r}; valid: {', '.join(MATCHINGS)}")
        self.num_classes = num_classes
        self.num_predictions = num_predictions or num_classes
        if matching == "none" and self.num_predictions != num_classes:
            raise ValueError(f"matching='none' needs num_predictions == num_classes "
                             f"({self.num_predictions} != {num_classes}); use 'hungarian' or 'majority'")
        self.matching: Matching = matching
        self.ignore_index = ignore_index
        self.add_state("confmat", default=torch.zeros(self.num_predictions, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(f"Prediction shape {tuple(preds.shape)} != target shape {tuple(target.shape)}")
        valid = target != self.ignore_index
        p, t = preds[valid].long(), target[valid].long()
        if t.numel():
            if int(t.min()) < 0 or int(t.max()) >= self.num_classes:
                bad = t[(t < 0) | (t >= self.num_classes)][0].item()
                raise ValueError(f"Target contains class id {bad}, outside [0, {self.num_classes}) "
                                 f"and not the ignore index {self.ignore_index}")
            if int(p.min()) < 0 or int(p.max()) >= self.num_predictions:
                bad = p[(p < 0) | (p >= self.num_predictions)][0].item()
                raise ValueError(f"Prediction id {bad} outside [0, {self.num_predictions})")
        counts = torch.bincount(p * self.num_classes + t, minlength=self.num_predictions * self.num_classes)
        self.confmat += counts.reshape(self.num_predictions, self.num_classes)

    def compute(self) -> dict[str, Tensor]:
        return scores_from_confmat(self.confmat, self.matching)
