"""k-means evaluation of dense features (MaskContrast's protocol and a pixel-level variant).

* ``prototypes`` (Van Gansbeke et al., ICCV 2021, Sec. 4.2; ``segmentation/utils/kmeans_utils.py``):
  one prototype per image, the sum of the raw projection features weighted by the saliency logit
  where the logit > 0.5 (normalised, :func:`salient_prototypes`); prototypes are PCA-whitened and
  clustered into k = num_classes - 1 groups; a pixel with logit > 0.5 takes its image's cluster
  id + 1, every other pixel the fixed background id 0. The num_classes ids are Hungarian-matched to
  the classes on the IoU matrix (``matching="hungarian_iou"``, the original's).
* ``pixels``: k-means (k = num_classes) over sampled, per-pixel normalised embeddings of the split
  (whitened the same way), every pixel assigned to its nearest centre, Hungarian-matched.

Both are fitted on the evaluated split itself (the usual transductive protocol) for every seed and
reported as mean and std over seeds. k-means is the suite's torch implementation (on the
:class:`FeatureSource`'s device, so on the GPU when there is one).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from usgs.evaluation.features import FeatureSource, PixelOutputs, salient_prototypes
from usgs.evaluation.pixel_features import PixelFeatures
from usgs.evaluation.report import Refine, TaskResult, mask_predictions
from usgs.evaluation.row_buffer import RowBuffer
from usgs.metrics import Matching, SegmentationMetric
from usgs.nets.kmeans import KMeansResult, kmeans

log = logging.getLogger(__name__)


def pca_whitening(x: Tensor, rel_eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """PCA whitening fitted on x [N,D]: ``(mean [D], W [D,r])`` with ``(x - mean) @ W`` of unit covariance.

    Components with variance below ``rel_eps`` x the largest are dropped (r <= min(N-1, D)), as PCA
    cannot whiten directions the data does not span.
    """
    if x.shape[0] < 2:
        raise ValueError(f"PCA whitening needs at least 2 points, got {x.shape[0]}")
    x = x.double()
    mean = x.mean(0)
    cov = (x - mean).t() @ (x - mean) / (x.shape[0] - 1)
    var, vec = torch.linalg.eigh(cov)  # ascending
    keep = var > rel_eps * var.max().clamp_min(1e-30)
    return mean.float(), (vec[:, keep] / var[keep].sqrt()).float()


def whiten(x: Tensor, transform: tuple[Tensor, Tensor] | None) -> Tensor:
    """Apply :func:`pca_whitening`'s ``(mean, W)`` to x [..., D]; identity when transform is None."""
    if transform is None:
        return x
    mean, w = (t.to(x.device) for t in transform)
    return (x - mean) @ w


def centre_logits(x: Tensor, transform: tuple[Tensor, Tensor] | None, centers: Tensor) -> Tensor:
    """Logits over ``centers`` [k,r] of pixels x [..., D] whose softmax equals that of
    ``-||whiten(x) - c||^2``: ``2 whiten(x).c - ||c||^2`` (the ``||whiten(x)||^2`` term is the same for
    every centre and cancels). It is linear in x (:func:`centre_linear`)."""
    weight, bias = centre_linear(transform, centers)
    return x @ weight.to(x).t() + bias.to(x)


def centre_linear(transform: tuple[Tensor, Tensor] | None, centers: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`centre_logits` as ``x @ weight.T + bias``: weight [k,D] = ``2 (W c^T)^T``, bias [k] =
    ``-2 mean.W c^T - ||c||^2``, so the D x r whitening is applied to the k centres instead of every
    pixel (a 1280-d map: r x fewer multiplications)."""
    if transform is None:
        projected, offset = centers.t(), centers.new_zeros(())
    else:
        mean, w = (t.to(centers.device) for t in transform)
        projected = w @ centers.t()  # [D,k]
        offset = mean @ projected  # [k]
    return 2 * projected.t(), -2 * offset - (centers * centers).sum(1)


def kmeans_large(x: Tensor, k: int, seed: int, sample: int = 20_000, restarts: int = 4, iters: int = 30,
                 full_iters: int = 3, tol: float = 1e-4) -> KMeansResult:
    """k-means for millions of points: the best of ``restarts`` k-means++ / Lloyd runs (``iters``
    steps, solved as one batch) on a seeded subsample of ``sample`` points, then at most
    ``full_iters`` full-data Lloyd steps from its centres.

    Seeding is the expensive, sequential part of k-means++ (k passes over the data) and restarts are
    what avoid poor local optima; on a subsample both are cheap, and for well-populated clusters the
    subsample optimum lies near the full-data one, so the full passes only polish (Sculley 2010 makes
    the same bet with mini-batches). x [N,D] on any device. bench/kmeans.py measures it.
    """
    gen = torch.Generator().manual_seed(seed)
    if x.shape[0] <= sample:
        return kmeans(x, k, iters=iters, tol=tol, generator=gen)
    idx = torch.randperm(x.shape[0], generator=gen)[:sample].to(x.device)
    sub = kmeans(x[idx].unsqueeze(0).expand(restarts, -1, -1).contiguous(), k, iters=iters, tol=tol, generator=gen)
    return kmeans(x, k, iters=full_iters, tol=tol, init=sub.centers[int(sub.inertia.argmin())])


def _sample(features: PixelFeatures, per_image: int, generator: torch.Generator) -> Tensor:
    """``per_image`` random pixels of each image, any label: features [B,D,H,W] -> [B*per_image, D]."""
    b, _, h, w = features.shape
    idx = torch.stack([torch.randperm(h * w, generator=generator)[: min(per_image, h * w)] for _ in range(b)])
    return features.gather(idx).flatten(0, 1)


class KMeansEvaluation:
    """``evaluate.py task=kmeans``: the ``prototypes`` protocol (needs saliency) and the ``pixels`` variant.

    Args:
        seeds: k-means seeds (5 in the paper's protocol).
        pca_whiten: whiten before clustering (the paper does).
        pixels: also run the pixel-level variant.
        pixels_per_image: pixels sampled per image to fit the pixel-level k-means.
        iters: k-means iterations.
        layer: features read (:func:`usgs.nets.dense_outputs.dense_outputs`); "projection" = the
            raw embedding, as the original.
        logit_threshold: a pixel is salient when its saliency logit exceeds this (original 0.5;
            0 = probability > 0.5).
        logit_weighted: weight the prototype's pixels by their saliency logit (the original).
        matching: cluster-to-class matching of :class:`SegmentationMetric` ("hungarian_iou" =
            the original's IoU-matrix Hungarian; "hungarian" maximises matched pixels).
    """

    name = "kmeans"

    def __init__(self, seeds: Sequence[int] = (0, 1, 2, 3, 4), pca_whiten: bool = True,
                 pixels: bool = True, pixels_per_image: int = 1000, iters: int = 100,
                 layer: str = "projection", logit_threshold: float = 0.5, logit_weighted: bool = True,
                 matching: Matching = "hungarian_iou") -> None:
        if not seeds:
            raise ValueError("kmeans evaluation needs at least one seed")
        self.seeds = tuple(int(s) for s in seeds)
        self.pca_whiten = pca_whiten
        self.pixels = pixels
        self.pixels_per_image = pixels_per_image
        self.iters = iters
        self.layer = layer
        self.logit_threshold = logit_threshold
        self.logit_weighted = logit_weighted
        self.matching: Matching = matching

    def _prototypes(self, out: PixelOutputs) -> tuple[Tensor, Tensor, Tensor]:
        assert out.saliency is not None
        return salient_prototypes(out.features, out.saliency, self.logit_threshold, self.logit_weighted)

    def _fit(self, x: Tensor, k: int, source: FeatureSource) -> tuple[tuple[Tensor, Tensor] | None, list[Tensor]]:
        device = source.device
        if x.shape[0] < k:
            raise ValueError(f"k-means with k={k} needs at least {k} points, got {x.shape[0]} "
                             "(too few images / salient images in the split)")
        transform = pca_whitening(x) if self.pca_whiten else None
        xw = whiten(x.to(device), transform)
        centers = [kmeans_large(xw, k, seed=s, iters=self.iters).centers
                   for s in source.bar(self.seeds, f"k-means (k={k}) per seed")]
        return transform, centers

    def run(self, train: FeatureSource, evaluation: FeatureSource, num_classes: int,
            class_names: Sequence[str] = (), refine: Refine | None = None) -> TaskResult:
        device = evaluation.device
        protos: list[Tensor] = []
        valid: list[Tensor] = []
        pixel_samples = RowBuffer((evaluation.num_images or 0) * self.pixels_per_image)
        generator = torch.Generator().manual_seed(self.seeds[0])
        has_saliency = True
        for _, out in evaluation:
            has_saliency = has_saliency and out.saliency is not None
            if has_saliency:
                p, v, _ = self._prototypes(out)
                protos.append(p)
                valid.append(v)
            if self.pixels:
                pixel_samples.append(_sample(out.features.normalized(), self.pixels_per_image, generator))
        if not has_saliency:
            log.warning("kmeans: the module predicts no saliency; only the pixel-level variant is run")
        if not has_saliency and not self.pixels:
            raise ValueError("kmeans: the module predicts no saliency and pixels=false: nothing to evaluate")
        image_clusters: list[Tensor] = []
        if has_saliency:
            all_protos, all_valid = torch.cat(protos), torch.cat(valid)
            n_salient = int(all_valid.sum())
            if n_salient < max(num_classes - 1, 2):  # e.g. an untrained saliency head
                log.warning("kmeans: only %d images have a salient pixel (logit > %s); too few for k = %d: "
                            "every salient pixel gets cluster 1", n_salient, self.logit_threshold,
                            num_classes - 1)
                image_clusters = [torch.zeros(all_protos.shape[0], dtype=torch.long) for _ in self.seeds]
            else:
                transform, centers = self._fit(all_protos[all_valid], num_classes - 1, evaluation)
                image_clusters = [torch.cdist(whiten(all_protos.to(device), transform), c).argmin(1).cpu()
                                  for c in centers]
        if self.pixels:
            pixel_transform, pixel_centers = self._fit(pixel_samples.rows(), num_classes, evaluation)

        result = TaskResult(self.name, class_names or [str(c) for c in range(num_classes)])
        variants = (["prototypes"] if has_saliency else []) + (["pixels"] if self.pixels else [])
        metrics = {v: [SegmentationMetric(num_classes, num_classes, self.matching) for _ in self.seeds]
                   for v in variants}
        if self.pixels:
            pixel_linear = [centre_linear(pixel_transform, c) for c in pixel_centers]
        start = 0
        for batch, out in evaluation:
            b = out.features.shape[0]
            if self.pixels:  # the same for every seed
                pixel_feats = out.features.normalized().to(device)
            for i in range(len(self.seeds)):
                if has_saliency:
                    cluster = image_clusters[i][start:start + b]
                    assert out.saliency is not None
                    # foreground probability re-centred on the threshold: argmax = (logit > threshold)
                    fg = torch.sigmoid(torch.logit(out.saliency, eps=1e-7) - self.logit_threshold)
                    probs = torch.zeros(b, num_classes, *fg.shape[1:])
                    probs[:, 0] = 1.0 - fg
                    probs.scatter_(1, (cluster + 1).view(b, 1, 1, 1).expand(-1, 1, *fg.shape[1:]),
                                   fg.unsqueeze(1))
                    pred = mask_predictions(probs, batch, refine)
                    metrics["prototypes"][i].update(pred, batch["mask"])
                    if i == 0:
                        result.add_examples("prototypes", batch, pred)
                if self.pixels:
                    logits = pixel_feats.linear(*pixel_linear[i])  # [b,k,H,W]
                    probs = F.softmax(logits, dim=1).cpu()
                    pred = mask_predictions(probs, batch, refine)
                    metrics["pixels"][i].update(pred, batch["mask"])
                    if i == 0:
                        result.add_examples("pixels", batch, pred)
            start += b
        for variant, seeds_metrics in metrics.items():
            result.add_scores(variant, [m.compute() for m in seeds_metrics])
        return result
