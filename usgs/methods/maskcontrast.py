"""MaskContrast (Van Gansbeke et al., "Unsupervised Semantic Segmentation by Contrasting Object Mask
Proposals", ICCV 2021) as a LightningModule."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usgs.methods.base import OptimizerFactory, SegmentationModule
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
from usgs.methods.ema import ema_update
from usgs.methods.maskcontrast_transforms import PhotometricAugment
from usgs.methods.twin_views import SECOND_VIEW_SUFFIX
from usgs.nets.deeplab import DeepLabV3
from usgs.nets.kmeans import assign, kmeans

# Backbone stages in forward order (ResNet and EfficientNet-Lite alike); ``frozen_stages=n`` freezes the first n.
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
FEATURE_LAYERS = ("embedding", "projection", "decoder")


def _frozen_modules(net: DeepLabV3, frozen_stages: int) -> list[nn.Module]:
    """Backbone modules of the first ``frozen_stages`` of STAGES (the backbone's ``stage_modules``)."""
    if not frozen_stages:
        return []
    stage_modules = getattr(net.backbone, "stage_modules", None)
    if not callable(stage_modules):
        raise ValueError(f"frozen_stages needs a backbone with stages (ResNet, EfficientNet-Lite), not "
                         f"{type(net.backbone).__name__}")
    return [m for stage in STAGES[:frozen_stages] for m in stage_modules(stage)]


class MaskContrast(SegmentationModule):
    """Pixel embeddings contrasted against object-mask prototypes of a momentum encoder.

    ``net`` is a :class:`DeepLabV3` whose classifier is the 1x1 projection to the D-dim embedding
    (paper: ResNet-50 OS 8, ASPP 12/24/36, 256 channels, D = 32); a bias-free 1x1 saliency head reads
    the same 256-channel features, as in the paper's code. Per step, for the query view q with saliency
    s_q [B,H,W] and the key view k with s_k (``image2`` / ``<saliency_key>2`` from
    :class:`MaskContrastTransform`; the query's own crop when the batch has no key view):

    * query embeddings ``e_q = normalize(net(q))`` [B,D,H,W]; key prototypes ``p_b = normalize(sum of
      normalize(key_net(k)) over s_k,b == 1)`` [B,D], gathered over processes;
    * every pixel of image b with s_q == 1 is classified among all batch prototypes + the queue
      [K,D] with temperature T, target p_b (cross-entropy with E-Net class weights), plus
      ``saliency_weight`` x balanced BCE of the saliency logits against s_q;
    * the key encoder follows the query one by EMA (m = 0.999 every step); valid prototypes are queued.

    Validation (cheap, no extra pass): k-means (k = num_classes - 1) of the queued prototypes gives
    centroids; each image's predicted-saliency prototype takes its nearest centroid (ids 1..k), the
    background is 0, and the base class Hungarian-matches the num_classes ids to the classes. It is
    a cheap stand-in (ours) for the k-means protocol, the training queue as the prototype set; ``evaluate.py
    task=kmeans`` runs the full protocol (PCA whitening, 5 seeds).

    Args:
        net: DeepLabV3 with ``num_classes = embedding dim``.
        num_classes: dataset classes (the validation clustering uses num_classes - 1 foreground ids).
        saliency_key: batch key of the foreground mask: "saliency" (dataset's) or "prior" (make_priors).
        momentum: key-encoder EMA momentum.
        queue_size: K (128 with supervised saliency, 256 with unsupervised, in the paper).
        temperature: T = 0.5.
        saliency_weight: weight of the balanced BCE saliency loss (1 in the paper).
        frozen_stages: freeze the first n of (stem, layer1..layer4) in the query and the key encoder,
            BN statistics included (the original's ``freeze_layers: True`` is 3: stem, layer1, layer2).
        enet_weights: weight the pixel cross-entropy by E-Net class weights ``1 / ln(1.02 + p_b)``,
            p_b = share of the batch's query pixels that belong to image b (the original's).
        gather_prototypes: with several processes, contrast against the batch prototypes of all of
            them (ours) or of this process only (the original's); no effect on one process.
        shuffle_bn: MoCo shuffled BN for the key encoder across processes (no-op on one process).
        augment: photometric augmentation applied independently to the two views.
    """

    uses_labels = False  # learns from saliency masks only; the segmentation masks are for validation logs

    def __init__(self, net: DeepLabV3, num_classes: int, optimizer: OptimizerFactory | None = None,
                 poly_power: float = 0.9, saliency_key: str = "saliency", momentum: float = 0.999,
                 queue_size: int = 128, temperature: float = 0.5, saliency_weight: float = 1.0,
                 frozen_stages: int = 0, shuffle_bn: bool = True, augment: PhotometricAugment | None = None,
                 enet_weights: bool = True, gather_prototypes: bool = True, **base: Any) -> None:
        base.setdefault("matching", "hungarian")
        super().__init__(num_classes, optimizer, poly_power, **base)
        if not 0 <= frozen_stages <= len(STAGES):
            raise ValueError(f"frozen_stages must be in 0..{len(STAGES)}, got {frozen_stages}")
        if not 0.0 <= momentum <= 1.0 or temperature <= 0:
            raise ValueError(f"need 0 <= momentum <= 1 and temperature > 0, got {momentum}, {temperature}")
        self.net = net
        self.embedding_dim = net.num_classes
        self.saliency_head = nn.Conv2d(net.head.channels, 1, 1, bias=False)
        self.key_net = copy.deepcopy(net)
        self.key_net.requires_grad_(False)
        self.queue = PrototypeQueue(queue_size, self.embedding_dim)
        self.saliency_key = saliency_key
        self.momentum = momentum
        self.temperature = temperature
        self.saliency_weight = saliency_weight
        self.shuffle_bn = shuffle_bn
        self.augment = augment if augment is not None else PhotometricAugment()
        # The original (pretrain/utils/utils.py freeze_layers) freezes these stages in BOTH encoders:
        # no gradient, and eval mode so that their BN statistics stay the pretrained ones.
        self.frozen = [m for encoder in (net, self.key_net) for m in _frozen_modules(encoder, frozen_stages)]
        for module in self.frozen:
            module.requires_grad_(False)
        self.enet_weights = enet_weights
        self.gather_prototypes = gather_prototypes
        self.centroids: Tensor | None = None

    def train(self, mode: bool = True) -> MaskContrast:
        super().train(mode)
        for module in self.frozen:  # frozen stages keep their (pretrained) BN statistics
            module.eval()
        return self

    # --- embeddings ------------------------------------------------------------------------------
    def layer_features(self, image: Tensor, layer: str = "embedding") -> tuple[Tensor, Tensor]:
        """image [B,3,H,W] -> (features [B,C,H,W] of ``layer``, saliency logits [B,H,W]), upsampled.

        Layers: "embedding" (L2-normalised projection, D channels: what training contrasts),
        "projection" (the raw projection, D channels: what the original's k-means and retrieval read),
        "decoder" (the head's 256-channel features before the projection: what the original's
        linear probe reads, ``segmentation/linear_finetune.py``).
        """
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"Unknown layer {layer!r}; valid: {', '.join(FEATURE_LAYERS)}")
        features = self.net.features(image)
        size = image.shape[-2:]
        sal = F.interpolate(self.saliency_head(features), size=size, mode="bilinear", align_corners=False)
        out = features if layer == "decoder" else self.net.head.classifier(features)
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return (F.normalize(out, dim=1) if layer == "embedding" else out), sal[:, 0]

    def embed(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """image [B,3,H,W] -> (L2-normalised embeddings [B,D,H,W], saliency logits [B,H,W])."""
        return self.layer_features(image, "embedding")

    @torch.no_grad()
    def key_prototypes(self, key_image: Tensor, saliency: Tensor) -> tuple[Tensor, Tensor]:
        """Momentum-encoder prototypes of the key views: ([B,D] unit rows, valid [B])."""
        if self.shuffle_bn:
            shuffled, restore = shuffle_batch(key_image)
            keys = unshuffle_batch(self.key_net(shuffled), restore)
        else:
            keys = self.key_net(key_image)
        return mask_prototypes(F.normalize(keys, dim=1), saliency)

    def forward(self, image: Tensor) -> Tensor:
        return self.embed(image)[0]

    # --- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        key = self.saliency_key
        if key not in batch:
            raise KeyError(f"Batch has no {key!r} (keys: {sorted(batch)}); set "
                           "model.saliency_key, or data.prior=saliency_sup|saliency_unsup for 'prior'")
        image, saliency = batch["image"], batch[key]
        # Key view: its own crop and mask when the transform drew one (MaskContrastTransform with
        # independent_views, as the original's DatasetKeyQuery), else the query's crop.
        key_image = batch.get("image" + SECOND_VIEW_SUFFIX, image)
        key_saliency = batch.get(key + SECOND_VIEW_SUFFIX, saliency)
        query, sal_logits = self.embed(self.augment(image))
        sal_loss = balanced_bce(sal_logits, saliency, self.ignore_index)
        ema_update(self.key_net, self.net, self.momentum)
        protos, valid = self.key_prototypes(self.augment(key_image), key_saliency)
        all_protos = all_gather_cat(protos)
        all_valid = all_gather_cat(valid.to(torch.uint8)).bool()
        # gather_prototypes: every process's batch prototypes are candidates (ours); else this
        # process's only, as the original's builder.py (the queue receives all of them either way).
        if self.gather_prototypes:
            candidates, candidate_valid = all_protos, all_valid
            offset = gathered_offset(image.shape[0], image.device)
        else:
            candidates, candidate_valid, offset = protos, valid, 0
        # A query pixel needs its own image's prototype: images whose key view has no foreground
        # give no query pixel.
        query_saliency = torch.where(valid.view(-1, 1, 1), saliency, torch.zeros_like(saliency))
        logits, target = contrastive_logits(query, query_saliency, candidates, candidate_valid,
                                            self.queue.queue.clone(), self.temperature, offset)
        weight = enet_class_weights(target, logits.shape[1]).to(logits.dtype) if self.enet_weights else None
        contrast = F.cross_entropy(logits, target, weight=weight) if target.numel() else query.sum() * 0.0
        self.queue.enqueue(all_protos[all_valid])
        loss = contrast + self.saliency_weight * sal_loss
        self.log_dict({"train/loss": loss, "train/contrastive": contrast, "train/saliency": sal_loss},
                      prog_bar=True, batch_size=image.shape[0])
        return loss

    def param_groups(self) -> list[dict[str, Any]]:
        key_ids = {id(p) for p in self.key_net.parameters()}
        return [{"params": [p for p in self.parameters() if p.requires_grad and id(p) not in key_ids]}]

    # --- validation proxy ------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.centroids = None  # the queue changed: re-cluster it

    def on_test_epoch_start(self) -> None:
        self.centroids = None

    def queue_centroids(self) -> Tensor:
        """k-means (k = num_classes - 1, seed 0) of the queued prototypes: [k,D]."""
        if self.centroids is None:
            k = max(1, min(self.num_classes - 1, self.queue.queue.shape[0]))
            generator = torch.Generator().manual_seed(0)
            self.centroids = kmeans(self.queue.queue.float(), k, generator=generator).centers
        return self.centroids

    @torch.no_grad()
    def predict(self, image: Tensor) -> Tensor:
        """Cluster ids [B,H,W]: 0 = predicted background, 1..k = the image prototype's centroid."""
        emb, sal_logits = self.embed(image)
        foreground = (sal_logits > 0).long()  # sigmoid > 0.5
        protos, _ = mask_prototypes(emb, foreground)
        cluster = assign(protos, self.queue_centroids()) + 1
        return cluster.view(-1, 1, 1) * foreground
