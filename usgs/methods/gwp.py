"""Losses of the single-stage weakly supervised model (Araslanov & Roth, CVPR 2020, Sec. 3.1-3.4).

- normalised Global Weighted Pooling (nGWP): class scores from pixel logits weighted by their own
  softmax masks, ``y_c = sum_i m_ic s_ic / (1 + sum_i m_ic)`` (Eq. 2);
- focal mask penalty: ``(1 - mean_i m_ic)^p * log(lambda + mean_i m_ic)`` (Eq. 4), added to the
  score so that a present class must also cover some area;
- pseudo ground truth from the PAMR-refined masks (a class is kept where it exceeds 60% of its
  maximum, 70% for background, never below 0.2; ambiguous pixels ignored) and the class-balanced
  self-supervised cross-entropy (Sec. 3.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ngwp_scores(logits: Tensor, masks: Tensor) -> Tensor:
    """nGWP class scores [B,C] from pixel logits [B,C,H,W] and softmax masks [B,C,H,W] (Eq. 2).

    The 1 in the denominator keeps classes with (almost) empty masks near 0 instead of letting a
    single confident pixel decide the image-level score.
    """
    return (logits * masks).flatten(2).sum(-1) / (1.0 + masks.flatten(2).sum(-1))


def focal_mask_penalty(masks: Tensor, power: float = 3.0, lam: float = 0.01) -> Tensor:
    """Focal mask penalty [B,C] from masks [B,C,H,W] (Eq. 4): ``(1 - m)^p log(lam + m)``, m = mean mask.

    Defaults are the authors' (``FOCAL_P = 3``, ``FOCAL_LAMBDA = 0.01``): the penalty is strongly
    negative for a class with nearly no area and vanishes once the class covers the image.
    """
    area = masks.flatten(2).mean(-1)
    return torch.pow(1.0 - area, power) * torch.log(lam + area)


def pseudo_gt_from_masks(masks: Tensor, background: bool, cutoff_top: float = 0.6,
                         cutoff_bg: float = 0.7, cutoff_low: float = 0.2) -> Tensor:
    """Binary pseudo GT [B,C,H,W] from refined masks [B,C,H,W] (Sec. 3.4, the authors' values).

    A pixel is assigned to class c when its mask exceeds ``cutoff_top`` times the class maximum
    (``cutoff_bg`` for the background channel 0 when ``background``) and at least ``cutoff_low``;
    pixels claimed by several classes are left unassigned (all zeros).
    """
    flat = masks.flatten(2)
    top = flat.max(-1, keepdim=True).values * cutoff_top
    if background:
        top[:, :1] = flat[:, :1].max(-1, keepdim=True).values * cutoff_bg
    top = top.clamp_min(cutoff_low)
    gt = (flat > top).to(masks.dtype)
    ambiguous = gt.sum(1, keepdim=True) > 1
    return (gt * (~ambiguous)).view_as(masks)


def balanced_self_supervision_loss(logits: Tensor, pseudo_gt: Tensor, num_present: Tensor,
                                   ignore_index: int = 255) -> Tensor:
    """Class-balanced CE of logits [B,C,h,w] against binary pseudo GT [B,C,H,W]; returns [B].

    Each pixel's CE is weighted by ``1 - n_c / (1 + n)`` (n_c: pixels of its pseudo class, n: all
    assigned pixels) so that every class counts; an image contributes only when its pseudo GT holds
    as many classes as ``num_present`` [B] (the image labels, plus background when modelled), which
    stops early, incomplete masks from teaching the network to drop classes.
    """
    logits = F.interpolate(logits, size=pseudo_gt.shape[-2:], mode="bilinear", align_corners=True)
    target = pseudo_gt.argmax(1)
    target[pseudo_gt.sum(1) < 1] = ignore_index
    b, c = pseudo_gt.shape[:2]
    per_class = pseudo_gt.view(b, c, -1).sum(-1)
    total = per_class.sum(-1, keepdim=True)
    class_weight = (total - per_class) / (1.0 + total)
    pixel_weight = (pseudo_gt * class_weight[:, :, None, None]).sum(1).view(b, -1)
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").view(b, -1)
    complete = ((per_class > 0).sum(-1) == num_present).to(ce.dtype)
    return complete * (pixel_weight * ce).mean(-1)
