"""Segmentation trained on pseudo ground truth (``prior``) with a fraction of real pixel labels mixed in."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usgs.data.transforms import denormalize
from usgs.methods.supervised import SupervisedSegmentation
from usgs.priors.crf import label_crf

# Fractional part of index * (golden ratio - 1): a low-discrepancy sequence, so any prefix of the
# dataset holds close to ``gt_fraction`` labelled images and the choice never changes between epochs.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def uses_ground_truth(index: Tensor, gt_fraction: float) -> Tensor:
    """bool [B]: whether sample ``index`` [B] trains on its real mask (fixed per sample)."""
    return torch.remainder(index.double() * _GOLDEN, 1.0) < gt_fraction


class WeakDeepLab(SupervisedSegmentation):
    """Any ``net`` (DeepLabV3, :class:`~usgs.nets.encdec_unpool.EncDecUnpool`, ...) on mixed targets.

    Each training sample's target is its pseudo label map (batch key ``prior``: cam_saliency or
    single-stage masks) or, for a fixed ``gt_fraction`` of the samples, its real ``mask`` (the seed's
    option; 0 = image-level supervision only, 1 = the fully supervised upper bound). A batch whose
    targets are entirely ignored adds a zero loss. ``class_weights`` as in the supervised module (the
    seed weighted Vaihingen's car x10). ``test_crf``: keyword arguments of
    :func:`usgs.priors.crf.label_crf` (e.g. :data:`usgs.priors.crf.DEEPLAB_TEST_CRF`, the image-level
    seed's test-time CRF on the arg-max labels) applied to every test prediction, or ``None``.
    """

    class_weights: Tensor | None

    def __init__(self, gt_fraction: float = 0.0, pseudo_labeler: nn.Module | None = None,
                 test_crf: dict[str, float] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("target_key", "prior")
        super().__init__(**kwargs)
        if not 0.0 <= gt_fraction <= 1.0:
            raise ValueError(f"gt_fraction must be in [0, 1], got {gt_fraction}")
        self.gt_fraction = gt_fraction
        self.pseudo_labeler = pseudo_labeler
        self.test_crf = dict(test_crf) if test_crf else None

    def target(self, batch: dict[str, Any]) -> Tensor:
        """Training target int64 [B,H,W] (255 = ignore) mixing ``prior`` and ``mask``.

        With a ``pseudo_labeler`` (e.g. :class:`~usgs.priors.cam_saliency.OnlinePseudoLabeler`), samples
        whose mask is entirely ignored but whose ``labels`` are set (Vaihingen N2 crops: crop-level
        labels only) get pseudo labels computed on the fly; the others keep their real mask.
        """
        if self.pseudo_labeler is not None:
            mask = batch["mask"]
            weak = (mask == self.ignore_index).flatten(1).all(1) & (batch["labels"].sum(1) > 0)
            if bool(weak.any()):
                mask = mask.clone()
                mask[weak] = self.pseudo_labeler(batch["image"][weak], batch["labels"][weak])
            return mask
        use_gt = uses_ground_truth(batch["index"], self.gt_fraction)
        if bool(use_gt.all()):
            return batch["mask"]
        if "prior" not in batch:
            raise KeyError(f"Batch has no 'prior' (keys: {sorted(batch)}); gt_fraction={self.gt_fraction} < 1 "
                           "needs pseudo labels: set data.prior=<name> (e.g. cam_saliency, made by make_priors.py)")
        if not bool(use_gt.any()):
            return batch["prior"]
        return torch.where(use_gt[:, None, None], batch["mask"], batch["prior"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        target = self.target(batch)
        logits = self.net(batch["image"])
        if not bool((target != self.ignore_index).any()):
            loss = logits.sum() * 0.0  # every pixel ignored: keep the graph, add nothing
        else:
            loss = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        prediction = self.predict_full(batch["image"])
        if self.test_crf is not None:
            labels = prediction.argmax(1).cpu().numpy()
            rgb = denormalize(batch["image"]).cpu().numpy()
            refined = [label_crf(rgb[b], labels[b], **self.test_crf) for b in range(len(labels))]
            prediction = torch.from_numpy(np.stack(refined)).to(batch["mask"].device)
        self.test_metric.update(prediction, batch["mask"])
