"""Semantic segment retrieval (MaskContrast, Van Gansbeke et al., ICCV 2021, Sec. 4.4).

``segments="saliency"`` (the paper's protocol, ``segmentation/utils/retrieval_utils.py``): every
image gives one segment, its predicted-salient region (:func:`salient_prototypes`: logit > 0.5,
features weighted by the logit). A training-split segment enters the database with the majority
ground-truth class inside it (background and ignore excluded; ties: the larger class id, as the
original's ``max((count, class))``), or is dropped when it holds none. Each evaluation image's
segment takes the majority label of its ``k`` nearest database segments (cosine; k = 1 in the
paper), its salient pixels get that label and the rest the background class. The metric covers the
background and the selected classes; with a class subset its mIoU leaves the background out, as the
original's. A dataset without a background class scores only the salient pixels.

``segments="oracle"`` ("oracle segments", ours): every ground-truth (image, class) region of both
splits is a segment (mean of the per-pixel normalised features), so segmentation errors cannot
count; it measures the features alone.

``classes`` restricts database and metric to a subset (the paper's 7-class VOC setting: bus,
airplane, car, person, cat, cow, bottle); pixels of other classes are ignored. No CRF.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from usgs.evaluation.features import FeatureSource, salient_prototypes
from usgs.evaluation.pixel_features import PixelFeatures
from usgs.evaluation.report import Refine, TaskResult
from usgs.metrics import SegmentationMetric

IGNORE_INDEX = 255


def segment_prototypes(features: Tensor | PixelFeatures, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-(image, class) mean features of a remapped target [B,H,W] (ids 0..m-1, 255 ignored);
    features [B,D,H,W] (a tensor or :class:`PixelFeatures`).

    Returns (prototypes [n,D] unit rows, labels [n], image index within the batch [n]).
    """
    features = PixelFeatures.of(features)
    protos, labels, images = [], [], []
    for b, t in enumerate(target):
        classes = [c for c in t.unique().tolist() if c != IGNORE_INDEX]
        if not classes:
            continue
        regions = torch.stack([(t == c).float() for c in classes])  # [m,H,W]
        sums = features.image(b).pool(regions.unsqueeze(0))[0]  # [m,D]
        protos.append(sums / regions.flatten(1).sum(1, keepdim=True))
        labels += classes
        images += [b] * len(classes)
    if not protos:
        empty = torch.zeros(0, dtype=torch.long)
        return torch.zeros(0, features.shape[1]), empty, empty
    return F.normalize(torch.cat(protos), dim=1), torch.tensor(labels), torch.tensor(images)


def vote(similarity: Tensor, labels: Tensor, k: int, num_labels: int) -> Tensor:
    """Majority label of each row's ``k`` most similar database entries (ties: the nearest's label).

    similarity [q,n], labels [n] -> [q]. Each neighbour adds 1 + a rank bonus below 1/k to its label,
    so counts decide and, among equal counts, the label holding the nearest neighbour wins.
    """
    k = min(k, similarity.shape[1])
    top = similarity.topk(k, dim=1).indices  # [q,k], nearest first
    weights = 1.0 + (k - torch.arange(k, dtype=torch.float64)) / (k * (k + 1))
    scores = torch.zeros(similarity.shape[0], num_labels, dtype=torch.float64)
    scores.scatter_add_(1, labels[top], weights.expand(top.shape[0], -1).contiguous())
    return scores.argmax(dim=1)


def majority_label(target: Tensor, region: Tensor, excluded: Sequence[int]) -> int | None:
    """Most frequent class of ``target`` [H,W] inside ``region`` [H,W] bool, ``excluded`` ids left out;
    ties go to the larger id (the original's ``max((count, class))``); None when nothing is left."""
    values = target[region]
    for e in excluded:
        values = values[values != e]
    if values.numel() == 0:
        return None
    counts = torch.bincount(values)
    best = counts.max()
    return int((counts == best).nonzero().max())


class SegmentRetrieval:
    """``evaluate.py task=retrieval``: nearest-neighbour labels of predicted-salient or oracle segments.

    Args:
        k: neighbours voting for each segment's label (1 in the paper).
        classes: class names of the subset (None = all classes).
        segments: "saliency" (the paper's: segments from the predicted saliency) or "oracle"
            (ground-truth segments, reported as "oracle_segments").
        layer: features read; "projection" = the raw embedding, as the original.
        logit_threshold, logit_weighted: see :func:`salient_prototypes` (original 0.5, True).
        background: name of the background class (None or absent = the dataset has none).
    """

    name = "retrieval"

    def __init__(self, k: int = 1, classes: Sequence[str] | None = None, segments: str = "saliency",
                 layer: str = "projection", logit_threshold: float = 0.5, logit_weighted: bool = True,
                 background: str | None = "background") -> None:
        if k < 1:
            raise ValueError(f"retrieval k must be >= 1, got {k}")
        if segments not in ("saliency", "oracle"):
            raise ValueError(f"retrieval segments must be 'saliency' or 'oracle', got {segments!r}")
        self.k = k
        self.classes = list(classes) if classes else None
        self.segments = segments
        self.layer = layer
        self.logit_threshold = logit_threshold
        self.logit_weighted = logit_weighted
        self.background = background

    def subset(self, class_names: Sequence[str]) -> list[int]:
        """Class ids of the configured subset (all classes when none is set)."""
        if self.classes is None:
            return list(range(len(class_names)))
        unknown = [c for c in self.classes if c not in class_names]
        if unknown:
            raise ValueError(f"retrieval classes {unknown} unknown; valid: {list(class_names)}")
        return [list(class_names).index(c) for c in self.classes]

    def run(self, train: FeatureSource, evaluation: FeatureSource, num_classes: int,
            class_names: Sequence[str] = (), refine: Refine | None = None) -> TaskResult:
        names = list(class_names) or [str(i) for i in range(num_classes)]
        if self.segments == "oracle":
            return self._run_oracle(train, evaluation, names)
        return self._run_saliency(train, evaluation, names)

    @staticmethod
    def _lut(ids: list[int]) -> Tensor:
        lut = torch.full((256,), IGNORE_INDEX, dtype=torch.long)
        lut[torch.tensor(ids)] = torch.arange(len(ids))  # class id -> metric id, others ignored
        return lut

    def _run_saliency(self, train: FeatureSource, evaluation: FeatureSource, names: list[str]) -> TaskResult:
        bg = names.index(self.background) if self.background in names else None
        ids = ([bg] if bg is not None else []) + [i for i in self.subset(names) if i != bg]
        lut = self._lut(ids)  # background (if any) -> 0
        excluded = [0, IGNORE_INDEX] if bg is not None else [IGNORE_INDEX]
        db_protos, db_labels = [], []
        for batch, out in train:
            if out.saliency is None:
                raise ValueError("retrieval segments=saliency needs a module that predicts saliency; "
                                 "use segments=oracle")
            protos, valid, fg = salient_prototypes(out.features, out.saliency, self.logit_threshold,
                                                   self.logit_weighted)
            target = lut[batch["mask"]]
            for b in valid.nonzero().squeeze(1).tolist():
                label = majority_label(target[b], fg[b], excluded)
                if label is not None:
                    db_protos.append(protos[b])
                    db_labels.append(label)
        if not db_protos:
            raise ValueError("retrieval: no training image has a salient segment holding a selected class")
        database, labels = torch.stack(db_protos), torch.tensor(db_labels)
        metric = SegmentationMetric(len(ids))
        result = TaskResult(self.name, [names[i] for i in ids])
        for batch, out in evaluation:
            assert out.saliency is not None
            protos, valid, fg = salient_prototypes(out.features, out.saliency, self.logit_threshold,
                                                   self.logit_weighted)
            target = lut[batch["mask"]]
            if bg is None:  # nothing to predict outside the segments: score the salient pixels only
                target = torch.where(fg, target, torch.full_like(target, IGNORE_INDEX))
            retrieved = vote(protos @ database.t(), labels, self.k, len(ids))
            pred = torch.where(fg & valid.view(-1, 1, 1), retrieved.view(-1, 1, 1), torch.zeros_like(target))
            metric.update(pred, target)
            result.add_examples("saliency_segments", {**batch, "mask": target}, pred)
        scores = metric.compute()
        if bg is not None and self.classes is not None:  # the original's subset mIoU leaves out the background
            scores["miou"] = scores["iou"][1:].nanmean()
        result.add_scores("saliency_segments", [scores])
        return result

    def _run_oracle(self, train: FeatureSource, evaluation: FeatureSource, names: list[str]) -> TaskResult:
        ids = self.subset(names)
        lut = self._lut(ids)
        db_protos, db_labels = [], []
        for batch, out in train:
            p, lab, _ = segment_prototypes(out.features.normalized(), lut[batch["mask"]])
            db_protos.append(p)
            db_labels.append(lab)
        database, labels = torch.cat(db_protos), torch.cat(db_labels)
        if database.shape[0] == 0:
            raise ValueError("retrieval: the training split has no segment of the selected classes")
        metric = SegmentationMetric(len(ids))
        result = TaskResult(self.name, [names[i] for i in ids])
        for batch, out in evaluation:
            target = lut[batch["mask"]]
            p, segment_label, image = segment_prototypes(out.features.normalized(), target)
            pred = torch.zeros_like(target)  # pixels outside every segment are ignored by the target
            if p.shape[0]:
                retrieved = vote(p @ database.t(), labels, self.k, len(ids))
                for b, c, label in zip(image.tolist(), segment_label.tolist(), retrieved.tolist()):
                    pred[b][target[b] == c] = label
            metric.update(pred, target)
            result.add_examples("oracle_segments", {**batch, "mask": target}, pred)
        result.add_scores("oracle_segments", [metric.compute()])
        return result
