"""STEGO (Hamilton et al., "Unsupervised Semantic Segmentation by Distilling Feature Correspondences",
ICLR 2022) on the frozen features of any usgs.nets backbone.

Written from ``mhamilton723/STEGO`` @ 8c1ad0a9 (``src/train_segmentation.py``, ``src/modules.py``,
``src/eval_segmentation.py``, ``src/configs/train_config.yml``): a light head (:class:`StegoHead`) maps
frozen features to a ``dim``-d code trained with the contrastive correlation loss
(:mod:`usgs.methods.stego_loss`) on five-crop images and their nearest neighbours
(:mod:`usgs.methods.stego_data`). A cluster probe (:class:`ClusterLookup`) and a linear probe are
trained at the same time on the detached code, each with its own Adam. Test: the code of the image
and of its mirror image averaged (eval_segmentation.py:124-126), probes scored with and without
STEGO's dense CRF; the cluster probe by one Hungarian matching over the whole split.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usgs.data.base import SegmentationDataModule
from usgs.data.transforms import denormalize
from usgs.methods.base import SegmentationModule
from usgs.methods.stego_data import CropBank, CropPairs, StegoDataModule, frozen_features
from usgs.methods.stego_loss import CorrelationLossWeights, contrastive_correlation_loss, correlation_loss
from usgs.metrics import SegmentationMetric
from usgs.nets.stego_head import ClusterLookup, Projection, StegoHead
from usgs.priors.processes import WorkerPool

__all__ = ["Stego", "correlation_loss"]
Refine = Callable[..., np.ndarray]  # refine(image uint8 [H,W,3], probs [C,H,W]) -> probs [C,H,W]


def _refine_one(item: tuple[np.ndarray, np.ndarray], refine: Refine) -> np.ndarray:
    return refine(item[0], item[1]).argmax(0)


class Stego(SegmentationModule):
    """STEGO head + probes on a frozen backbone. Argument names and defaults are STEGO's
    (train_config.yml @ 8c1ad0a9; line numbers in conf/model/stego.yaml).

    ``uses_labels`` is False: the head and the cluster probe never see a mask and ``last.ckpt`` is
    tested. The linear probe reads the train masks by design (a supervised probe of the code); its
    input is detached, so it cannot change the head, and nothing chooses a checkpoint with it.
    Test keys: ``test/{cluster,linear}/{miou,accuracy}`` and the same with ``_crf`` (fractions).
    """

    uses_labels = False

    def __init__(self, num_classes: int, backbone: nn.Module, dim: int = 70, projection: Projection = "nonlinear",
                 dropout: bool = True, extra_clusters: int = 0, lr: float = 5e-4, probe_lr: float = 5e-3,
                 feature_samples: int = 11, neg_samples: int = 5, pointwise: bool = True, zero_clamp: bool = True,
                 stabalize: bool = False, correspondence_weight: float = 1.0,
                 pos_intra_weight: float = 0.67, pos_inter_weight: float = 0.25, neg_inter_weight: float = 0.63,
                 pos_intra_shift: float = 0.18, pos_inter_shift: float = 0.12, neg_inter_shift: float = 0.46,
                 res: int = 224, crop_type: str | None = "five", crop_ratio: float = 0.5, num_neighbors: int = 7, cache_features: bool = True,
                 max_train_images: int | None = None,
                 cache_dir: str = "cache/priors", crf: Refine | None = None, crf_workers: int = 2,
                 crf_timeout: float = 300.0, flip: bool = True, eval_alpha: float = 2.0,
                 class_names: list[str] | None = None) -> None:
        super().__init__(num_classes, matching="hungarian", num_predictions=num_classes + extra_clusters,
                         class_names=class_names)
        if not hasattr(backbone, "out_key") or not hasattr(backbone, "channels"):
            raise TypeError(f"{type(backbone).__name__} has no out_key/channels (build it with "
                            "usgs.nets.backbones.backbone)")
        self.backbone = backbone.eval().requires_grad_(False)
        channels = int(backbone.channels[backbone.out_key])  # type: ignore[index]
        self.head = StegoHead(channels, dim, projection, dropout=0.1, feature_dropout=dropout)
        self.cluster_probe = ClusterLookup(dim, num_classes + extra_clusters)
        self.linear_probe = nn.Conv2d(dim, num_classes, 1)
        self.weights = CorrelationLossWeights(pos_intra_weight, pos_inter_weight, neg_inter_weight,
                                              pos_intra_shift, pos_inter_shift, neg_inter_shift)
        self.loss_options = dict(feature_samples=feature_samples, neg_samples=neg_samples, pointwise=pointwise,
                                 zero_clamp=zero_clamp, stabilize=stabalize)
        self.correspondence_weight = correspondence_weight
        self.lr, self.probe_lr = lr, probe_lr
        self.bank_options = dict(res=res, crop_type=crop_type, crop_ratio=crop_ratio, cache_features=cache_features,
                                 max_images=max_train_images)
        self.num_neighbors, self.cache_dir = num_neighbors, cache_dir
        self.crf, self.crf_workers, self.crf_timeout = crf, crf_workers, crf_timeout
        self.flip, self.eval_alpha = flip, eval_alpha
        self.automatic_optimization = False  # three optimisers, one backward (train_segmentation.py:98)
        k = num_classes + extra_clusters
        self.val_linear = SegmentationMetric(num_classes)
        self.test_metrics = nn.ModuleDict({
            "cluster": SegmentationMetric(num_classes, k, "hungarian"), "linear": SegmentationMetric(num_classes),
            "cluster_crf": SegmentationMetric(num_classes, k, "hungarian"),
            "linear_crf": SegmentationMetric(num_classes)})
        self._pool: WorkerPool | None = None

    # --- data -----------------------------------------------------------------------------------
    def training_data(self, datamodule: SegmentationDataModule) -> StegoDataModule:
        """``train.py`` hands the run's DataModule here: training reads five-crop pairs instead."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        bank = functools.partial(CropBank, datamodule, self.backbone, self.cache_dir, device=device,
                                 **self.bank_options)
        return StegoDataModule(datamodule, lambda: CropPairs(bank(), self.num_neighbors))

    def train(self, mode: bool = True) -> Stego:
        super().train(mode)
        self.backbone.eval()  # frozen: batch-norm statistics and dropout of the backbone stay off
        return self

    # --- network ---------------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """Frozen features of an image batch, or ``x`` itself when it already is a feature batch."""
        if x.shape[1] == 3:
            with torch.no_grad():
                return frozen_features(self.backbone, x)
        return x

    def code(self, image: Tensor) -> Tensor:
        """Code ``[B,dim,H,W]`` at the image's size; the flip-averaged one when ``flip``."""
        code = self.head(self.features(image))[1]
        if self.flip:
            code = (code + self.head(self.features(image.flip(3)))[1].flip(3)) / 2
        return F.interpolate(code, image.shape[-2:], mode="bilinear", align_corners=False)

    def predict(self, image: Tensor) -> Tensor:
        return self.cluster_probe(self.code(image), None)[1]

    # --- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        net_opt, linear_opt, cluster_opt = self.optimizers()  # type: ignore[misc]
        for opt in (net_opt, linear_opt, cluster_opt):
            opt.zero_grad()
        feats, code = self.head(self.features(batch["input"]))
        feats_pos, code_pos = self.head(self.features(batch["input_pos"]))
        terms = contrastive_correlation_loss(feats, feats_pos, code, code_pos, self.weights, **self.loss_options)
        loss = self.correspondence_weight * terms["loss"]
        detached = code.detach().clone()  # the probes never train the head (train_segmentation.py:213)
        mask = batch["mask"]
        logits = F.interpolate(self.linear_probe(detached), mask.shape[-2:], mode="bilinear", align_corners=False)
        valid = mask.reshape(-1) < self.num_classes
        logits = logits.permute(0, 2, 3, 1).reshape(-1, self.num_classes)[valid]
        linear_loss = F.cross_entropy(logits, mask.reshape(-1)[valid]) if bool(valid.any()) else logits.sum()
        cluster_loss = self.cluster_probe(detached, None)[0]
        self.manual_backward(loss + linear_loss + cluster_loss)
        net_opt.step()
        # The probes step their raw optimisers: Lightning counts every LightningOptimizer step as a
        # global step, and one batch is one step here (max_steps as in STEGO).
        cluster_opt.optimizer.step()
        linear_opt.optimizer.step()
        log = {f"train/{k}": v for k, v in terms.items() if k != "loss"}
        self.log_dict({**log, "train/linear": linear_loss, "train/cluster": cluster_loss}, on_step=True)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        # train_segmentation.py:373-383: Adam at model.lr for the head, 5e-3 for each probe.
        return [torch.optim.Adam(self.head.parameters(), lr=self.lr),
                torch.optim.Adam(self.linear_probe.parameters(), lr=self.probe_lr),
                torch.optim.Adam(self.cluster_probe.parameters(), lr=self.probe_lr)]

    # --- evaluation ------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # STEGO's validation (train_segmentation.py:254-269): no flip, no CRF, hard probe outputs.
        code = F.interpolate(self.head(self.features(batch["image"]))[1], batch["mask"].shape[-2:],
                             mode="bilinear", align_corners=False)
        self.val_metric.update(self.cluster_probe(code, None)[1], batch["mask"])
        self.val_linear.update(self.linear_probe(code), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        linear = self.val_linear.compute()
        self.val_linear.reset()
        self.log("val/linear/miou", float(linear["miou"]))
        super().on_validation_epoch_end()  # val/miou: the cluster probe's (Hungarian-matched)

    def on_test_epoch_start(self) -> None:
        self._pool = WorkerPool(self.crf_workers) if self.crf is not None else None

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        code = self.code(batch["image"])
        target = batch["mask"]
        probs = {"cluster": self.cluster_probe.log_probs(code, self.eval_alpha).softmax(1),
                 "linear": self.linear_probe(code).softmax(1)}
        for name, p in probs.items():
            self.test_metrics[name].update(p.argmax(1), target)
        if self._pool is None:
            return
        images = denormalize(batch["image"]).cpu().numpy()
        for name, p in probs.items():
            items = list(zip(images, p.float().cpu().numpy()))
            refined = self._pool.map(functools.partial(_refine_one, refine=self.crf), items, self.crf_timeout)
            self.test_metrics[f"{name}_crf"].update(torch.from_numpy(np.stack(refined)).to(target), target)

    def on_test_epoch_end(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for name, metric in self.test_metrics.items():
            if self.crf is None and name.endswith("_crf"):
                continue
            scores = metric.compute()
            metric.reset()
            probe, suffix = name.split("_")[0], "_crf" if name.endswith("_crf") else ""
            self.log(f"test/{probe}/miou{suffix}", float(scores["miou"]))
            self.log(f"test/{probe}/accuracy{suffix}", float(scores["pixel_accuracy"]))
            for cls, value in zip(self.class_names, scores["iou"].tolist(), strict=False):
                self.log(f"test/{probe}/iou{suffix}/{cls}", value)
