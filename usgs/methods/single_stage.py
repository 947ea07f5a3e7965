"""Single-stage weakly supervised segmentation from image labels (Araslanov & Roth, CVPR 2020).

One network predicts pixel class logits; image-level scores come from normalised Global Weighted
Pooling plus the focal mask penalty (``usgs.methods.gwp``); after ``pretrain_epochs`` the masks,
refined by PAMR (``usgs.nets.pamr``), become the network's own pseudo ground truth. The decoder
follows the authors' code: ASPP on the deep features, a skip from ``layer1``, Global Cue Injection
into the shallow features and a Stochastic Gate (psi = 0.3) mixing the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usgs.data.transforms import denormalize
from usgs.methods.base import OptimizerFactory, SegmentationModule
from usgs.methods.gwp import (
    balanced_self_supervision_loss,
    focal_mask_penalty,
    ngwp_scores,
    pseudo_gt_from_masks,
)
from usgs.nets.pamr import PAMR
from usgs.priors.crf import WEAK_CRF, dense_crf


class SingleStage(SegmentationModule):
    """Single-stage training (Araslanov & Roth, CVPR 2020) on ``labels`` [B,C] of any DataModule.

    With ``background_index`` set, that channel has the constant logit ``bg_logit`` (1.0, the authors'
    constant background score) and is always allowed; without it (e.g. Stanford Background, where
    every pixel has a class) only the image's classes compete. ``predict`` returns class probabilities,
    keeping classes whose image score passes ``fp_cut_score`` (0.3: the authors' ResNet-50 config; 0.1 in
    their defaults and ResNet-38 config).

    The authors' training and inference (``models/backbones/base_net.py``, ``infer_val.py``):
    ``freeze_backbone_bn`` keeps the backbone's BN statistics and affine parameters fixed (ImageNet's);
    ``freeze_aspp_bn_stats`` fixes the ASPP's BN statistics (its affine parameters learn);
    ``lr_mult`` = (backbone weights, backbone biases, new weights, new biases) multiply the base
    learning rate, biases without weight decay; ``test_scales`` x ``test_flip`` masks are averaged
    (a class is kept when its best score over the scales passes ``fp_cut_score``), the background
    channel raised to ``bg_pow``; ``test_crf`` (:func:`usgs.priors.crf.dense_crf` keyword arguments,
    the authors' ``utils/dcrf.py`` values) refines the test predictions.
    """

    foreground: Tensor

    def __init__(self, net: nn.Module, num_classes: int, optimizer: OptimizerFactory | None = None,
                 poly_power: float = 0.9, background_index: int | None = None, bg_logit: float = 1.0,
                 focal_power: float = 3.0, focal_lambda: float = 0.01, pamr_iters: int = 10,
                 pamr_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), pretrain_epochs: int = 5,
                 mask_loss_weight: float = 1.0, fp_cut_score: float = 0.3,
                 lr_mult: Sequence[float] = (1.0, 2.0, 10.0, 20.0), freeze_backbone_bn: bool = True,
                 freeze_aspp_bn_stats: bool = True, test_scales: Sequence[float] = (1.0,), test_flip: bool = False,
                 bg_pow: float = 1.0, test_crf: dict[str, float] | None = None, **base: Any) -> None:
        super().__init__(num_classes, optimizer, poly_power, **base)
        if background_index not in (None, 0):
            raise ValueError(f"background_index must be null or 0 (the pseudo-GT background channel), "
                             f"got {background_index}")
        self.net = net
        self.background_index = background_index
        self.bg_logit = bg_logit
        self.focal_power, self.focal_lambda = focal_power, focal_lambda
        self.pamr = PAMR(pamr_iters, tuple(pamr_dilations))
        self.pretrain_epochs = pretrain_epochs
        self.mask_loss_weight = mask_loss_weight
        self.fp_cut_score = fp_cut_score
        if len(lr_mult) != 4:
            raise ValueError(f"lr_mult must be 4 numbers (backbone weight, backbone bias, new weight, new bias), "
                             f"got {list(lr_mult)}")
        self.lr_mult = tuple(float(m) for m in lr_mult)
        self.test_scales, self.test_flip, self.bg_pow = tuple(test_scales), test_flip, bg_pow
        self.test_crf = dict(test_crf) if test_crf else None
        backbone = net.get_submodule("backbone")
        self.frozen_stats = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)] if freeze_backbone_bn else []
        for bn in self.frozen_stats:
            bn.requires_grad_(False)  # the authors' _fix_running_stats(self, fix_params=True)
        if freeze_aspp_bn_stats and hasattr(net, "aspp"):
            self.frozen_stats += [m for m in net.get_submodule("aspp").modules() if isinstance(m, nn.BatchNorm2d)]
        fg = torch.ones(num_classes, dtype=torch.bool)
        if background_index is not None:
            fg[background_index] = False
        self.register_buffer("foreground", fg, persistent=False)

    def logits(self, image: Tensor) -> Tensor:
        x = self.net(image)
        if self.background_index is not None:
            x = x.clone()
            x[:, self.background_index] = self.bg_logit
        return x

    def scores(self, logits: Tensor, masks: Tensor) -> Tensor:
        """Image-level class scores [B,C]: nGWP + focal mask penalty (Eq. 2 + Eq. 4)."""
        return ngwp_scores(logits, masks) + focal_mask_penalty(masks, self.focal_power, self.focal_lambda)

    def allowed(self, labels: Tensor) -> Tensor:
        """Labels [B,C] with the background (if any) always allowed."""
        return torch.where(self.foreground, labels, torch.ones_like(labels))

    def refine(self, image: Tensor, masks: Tensor, labels: Tensor) -> Tensor:
        """PAMR-refined masks at image size [B,C,H,W], classes absent from ``labels`` zeroed."""
        raw = denormalize(image).permute(0, 3, 1, 2).float() / 255.0  # PAMR works on image colours
        refined = self.pamr(raw, masks.detach())
        refined = F.interpolate(refined, size=image.shape[-2:], mode="bilinear", align_corners=True)
        return refined * self.allowed(labels)[:, :, None, None]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        image, labels = batch["image"], batch["labels"]
        logits = self.logits(image)
        masks = F.softmax(logits, 1)
        scores = self.scores(logits, masks)
        loss_cls = F.multilabel_soft_margin_loss(scores[:, self.foreground], labels[:, self.foreground])
        loss = loss_cls
        if self.current_epoch >= self.pretrain_epochs:  # the authors' warm-up on the class loss only
            refined = self.refine(image, masks, labels)
            pseudo = pseudo_gt_from_masks(refined, background=self.background_index is not None)
            num_present = self.allowed(labels).sum(-1)
            loss_mask = balanced_self_supervision_loss(logits, pseudo, num_present, self.ignore_index).mean()
            self.log("train/loss_mask", loss_mask)
            loss = loss + self.mask_loss_weight * loss_mask
        self.log("train/loss_cls", loss_cls)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def train(self, mode: bool = True) -> SingleStage:
        super().train(mode)
        for bn in self.frozen_stats:
            bn.eval()  # frozen statistics: normalise with the stored ones, never update them
        return self

    def masks_and_scores(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Softmax masks [B,C,H,W] and image scores [B,C] at one scale (the masks at the image size)."""
        logits = self.logits(image)
        masks = F.softmax(logits, 1)
        scores = self.scores(logits, masks)
        return F.interpolate(masks, size=image.shape[-2:], mode="bilinear", align_corners=False), scores

    def predict(self, image: Tensor) -> Tensor:
        return self.infer(image)

    def infer(self, image: Tensor, labels: Tensor | None = None, scales: Sequence[float] | None = None,
              flip: bool | None = None) -> Tensor:
        """Class probabilities [B,C,H,W]: masks averaged over ``scales`` x ``flip`` (default: the
        model's ``test_scales`` / ``test_flip``), classes kept by ``labels`` [B,C] when given (the
        authors' ``TEST.USE_GT_LABELS``) or else by ``fp_cut_score``, background ^ ``bg_pow``."""
        size = image.shape[-2:]
        masks, scores = [], []
        for scale in self.test_scales if scales is None else scales:
            x = image if scale == 1 else F.interpolate(image, scale_factor=scale, mode="bilinear",
                                                       align_corners=False)
            for flipped in (False, True) if (self.test_flip if flip is None else flip) else (False,):
                m, sc = self.masks_and_scores(x.flip(-1) if flipped else x)
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                masks.append(m.flip(-1) if flipped else m)
                scores.append(sc)
        if labels is None:
            best = torch.stack(scores).amax(0)  # the authors: max over scales of sigmoid(score)
            present = torch.sigmoid(best) > self.fp_cut_score
            present |= F.one_hot(best.argmax(1), self.num_classes).bool()
        else:
            present = labels > 0
        merged = torch.stack(masks).mean(0) * self.allowed(present.to(image.dtype))[:, :, None, None]
        if self.background_index is not None and self.bg_pow != 1.0:
            merged[:, self.background_index] = merged[:, self.background_index].pow(self.bg_pow)
        return merged

    @staticmethod
    def crf_refine(image: Tensor, probs: Tensor, crf: dict[str, float]) -> Tensor:
        """Dense CRF (:func:`usgs.priors.crf.dense_crf` keywords) on each image's masks [B,C,H,W]."""
        rgb = denormalize(image).cpu().numpy()
        masks = probs.float().cpu().numpy()
        refined = [dense_crf(rgb[b], masks[b], **crf) for b in range(len(rgb))]
        return torch.from_numpy(np.stack(refined)).to(probs.device)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        prediction = self.predict_full(batch["image"])
        if self.test_crf is not None:
            prediction = self.crf_refine(batch["image"], prediction, self.test_crf)
        self.test_metric.update(prediction, batch["mask"])

    def param_groups(self) -> list[dict[str, Any]]:
        """The authors' four groups: backbone / new layers x weights / biases (biases: no weight decay)."""
        groups: list[dict[str, Any]] = [{"params": [], "lr_scale": m} for m in self.lr_mult]
        for name, param in self.named_parameters():
            if param.requires_grad:
                new = not name.startswith("net.backbone.")
                bias = name.endswith(".bias")
                groups[2 * new + bias]["params"].append(param)
        for group in groups[1::2]:
            group["weight_decay"] = 0.0
        return [g for g in groups if g["params"]]


class RefinedMasks:
    """Attention source for ``prior=cam_saliency`` from a :class:`SingleStage` model: its PAMR-refined
    masks of the image's classes, ``(image [B,3,H,W], labels [B,C]) -> [B,C,H,W]`` in [0, 1]."""

    def __init__(self, model: SingleStage) -> None:
        self.model = model

    @torch.no_grad()
    def __call__(self, image: Tensor, labels: Tensor) -> Tensor:
        self.model.eval()
        masks = F.softmax(self.model.logits(image), 1)
        return self.model.refine(image, masks, labels)


class InferenceMasks:
    """Attention source for ``prior=single_stage``: the authors' pseudo labels (``infer_val.py``,
    ``utils/inference_tools.py`` ``MergeMultiScale``), ``(image [B,3,H,W], labels [B,C]) -> [B,C,H,W]``.

    Softmax masks without PAMR averaged over ``scales`` x ``flip`` (:meth:`SingleStage.infer`; the
    authors' ``TEST.SCALES`` [1, 0.5, 1.5, 2] and ``TEST.FLIP``), classes kept by the model's
    ``fp_cut_score`` (their ``TEST.USE_GT_LABELS: False``) or by the image's labels
    (``use_gt_labels``), background ^ the model's ``bg_pow``, then the dense CRF ``crf`` (their
    ``utils/dcrf.py``: :data:`usgs.priors.crf.WEAK_CRF`; None skips it). Marginals in [0, 1].
    """

    def __init__(self, model: SingleStage, scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True,
                 crf: dict[str, float] | None = WEAK_CRF, use_gt_labels: bool = False) -> None:
        self.model = model
        self.scales, self.flip = tuple(scales), flip
        self.crf = dict(crf) if crf else None
        self.use_gt_labels = use_gt_labels

    @torch.no_grad()
    def __call__(self, image: Tensor, labels: Tensor) -> Tensor:
        self.model.eval()
        probs = self.model.infer(image, labels if self.use_gt_labels else None, self.scales, self.flip)
        return probs if self.crf is None else self.model.crf_refine(image, probs, self.crf)
