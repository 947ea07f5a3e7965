"""Semantic segment retrieval (MaskContrast, Van Gansbeke et al., ICCV 2021, Sec. 4.4).

Every (image, class) region of the ground truth is a segment, represented by its mean embedding
(L2-normalised). Each segment of the evaluation split retrieves its ``k`` nearest segments (cosine)
of the training split and takes the majority label among them (ties: the nearest); all its pixels
get that label, and the mIoU is measured over the retrieved classes. ``classes`` restricts queries,
database and metric to a subset (the paper's 7-class VOC setting: bus, airplane, car, person, cat,
cow, bottle); pixels of other classes are ignored. No CRF: the segments are ground-truth regions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from usgs.evaluation.features import FeatureSource
from usgs.evaluation.report import Refine, TaskResult
from usgs.metrics import SegmentationMetric

IGNORE_INDEX = 255


def segment_prototypes(features: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-(image, class) mean features of a remapped target [B,H,W] (ids 0..m-1, 255 ignored).

    Returns (prototypes [n,D] unit rows, labels [n], image index within the batch [n]).
    """
    protos, labels, images = [], [], []
    for b, (feat, t) in enumerate(zip(features, target)):
        for c in t.unique():
            if int(c) == IGNORE_INDEX:
                continue
            region = t == c
            protos.append(feat[:, region].mean(dim=1))
            labels.append(int(c))
            images.append(b)
    if not protos:
        empty = torch.zeros(0, dtype=torch.long)
        return features.new_zeros(0, features.shape[1]), empty, empty
    return F.normalize(torch.stack(protos), dim=1), torch.tensor(labels), torch.tensor(images)


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


class SegmentRetrieval:
    """``evaluate.py task=retrieval``: nearest-neighbour labels of ground-truth segments.

    Args:
        k: neighbours voting for each segment's label.
        classes: class names of the subset (None = all classes).
    """

    name = "retrieval"

    def __init__(self, k: int = 1, classes: Sequence[str] | None = None) -> None:
        if k < 1:
            raise ValueError(f"retrieval k must be >= 1, got {k}")
        self.k = k
        self.classes = list(classes) if classes else None

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
        ids = self.subset(names)
        lut = torch.full((256,), IGNORE_INDEX, dtype=torch.long)
        lut[torch.tensor(ids)] = torch.arange(len(ids))  # class id -> subset id, others ignored
        db_protos, db_labels = [], []
        for batch, out in train:
            p, lab, _ = segment_prototypes(out.features, lut[batch["mask"]])
            db_protos.append(p)
            db_labels.append(lab)
        database, labels = torch.cat(db_protos), torch.cat(db_labels)
        if database.shape[0] == 0:
            raise ValueError("retrieval: the training split has no segment of the selected classes")
        metric = SegmentationMetric(len(ids))
        result = TaskResult(self.name, [names[i] for i in ids])
        for batch, out in evaluation:
            target = lut[batch["mask"]]
            p, segment_label, image = segment_prototypes(out.features, target)
            pred = torch.zeros_like(target)  # pixels outside every segment are ignored by the target
            if p.shape[0]:
                retrieved = vote(p @ database.t(), labels, self.k, len(ids))
                for b, c, label in zip(image.tolist(), segment_label.tolist(), retrieved.tolist()):
                    pred[b][target[b] == c] = label
            metric.update(pred, target)
            result.add_examples("segments", {**batch, "mask": target}, pred)
        result.add_scores("segments", [metric.compute()])
        return result
