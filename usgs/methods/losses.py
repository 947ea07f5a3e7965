"""Segmentation losses on logits [B,C,H,W] against int64 targets [B,H,W] (255 = ignore).

One class per loss so that a config picks it with Hydra ``_target_``
(``loss: {_target_: usgs.methods.losses.DiceLoss}``). Every loss returns a scalar and gives
0 (with a gradient path) when every pixel is ignored, so a batch of fully-void crops cannot
produce NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Validate shapes and return the boolean mask [B,H,W] of labelled pixels."""
    if logits.ndim != 4 or target.ndim != 3:
        raise ValueError(
            f"expected logits [B,C,H,W] and target [B,H,W], got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    valid = target != ignore_index
    if valid.any() and int(target[valid].max()) >= logits.shape[1]:
        raise ValueError(
            f"target holds class id {int(target[valid].max())} but the logits have only {logits.shape[1]} "
            f"channels (ignore index is {ignore_index})"
        )
    return valid


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy, optionally with label smoothing (Szegedy et al. 2016).

    ``label_smoothing=0.1`` is the seed's "soft CE" (its ``SoftCrossEntropyLoss(smooth_factor=0.1)``,
    which is exactly torch's label-smoothed CE: (1-e)*NLL + e * mean_c(-log p_c)).
    """

    def __init__(self, label_smoothing: float = 0.0, ignore_index: int = 255) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = _check(logits, target, self.ignore_index)
        if not valid.any():
            return logits.sum() * 0.0
        return F.cross_entropy(
            logits, target, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )


class SoftCrossEntropyLoss(CrossEntropyLoss):
    """The seed's soft CE: cross-entropy with label smoothing 0.1 (its ``smooth_factor=0.1``)."""

    def __init__(self, label_smoothing: float = 0.1, ignore_index: int = 255) -> None:
        super().__init__(label_smoothing=label_smoothing, ignore_index=ignore_index)


class DiceLoss(nn.Module):
    """Multi-class soft Dice loss (Milletari et al. 2016), the seed's default mask loss.

    As in the seed (segmentation_models.pytorch ``DiceLoss(mode="multiclass")``): softmax
    probabilities ``p`` [B,C,H,W] and one-hot target ``y``; per class c, summed over the batch
    and all labelled pixels, ``dice_c = 2 sum(p*y) / max(sum(p) + sum(y), eps)``; the loss is
    ``mean_c (1 - dice_c)`` where classes absent from the target contribute 0 (Dice is undefined
    for them) but still count in the mean over C.
    """

    def __init__(self, ignore_index: int = 255, eps: float = 1e-7) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.eps = eps

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = _check(logits, target, self.ignore_index)
        if not valid.any():
            return logits.sum() * 0.0
        num_classes = logits.shape[1]
        # log_softmax().exp() as in the seed: numerically stable probabilities
        prob = logits.float().log_softmax(dim=1).exp() * valid.unsqueeze(1)
        onehot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2)
        onehot = onehot.to(prob.dtype) * valid.unsqueeze(1)
        dims = (0, 2, 3)
        intersection = (prob * onehot).sum(dims)
        cardinality = prob.sum(dims) + onehot.sum(dims)
        dice = 2.0 * intersection / cardinality.clamp_min(self.eps)
        present = (onehot.sum(dims) > 0).to(dice.dtype)
        return ((1.0 - dice) * present).mean()


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017): mean over labelled pixels of -(1-p_t)^gamma log p_t.

    gamma = 2 is the paper's and the seed's choice; gamma = 0 is plain cross-entropy.
    """

    def __init__(self, gamma: float = 2.0, ignore_index: int = 255) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = _check(logits, target, self.ignore_index)
        if not valid.any():
            return logits.sum() * 0.0
        log_p = logits.float().log_softmax(dim=1)
        log_pt = log_p.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)[valid]
        return (-((1.0 - log_pt.exp()) ** self.gamma) * log_pt).mean()
