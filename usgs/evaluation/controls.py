"""Control rows: what a method's inputs alone score under the method's own protocol.

A method given saliency or a prior is only shown to learn when it beats what that input scores by
itself (``evaluate.py control=saliency_only|prior_only``, README "Protocol"):

* ``saliency_only`` for the clustering protocols (``task=kmeans``, ``task=retrieval``): every salient
  pixel of the input saliency is one cluster, every other pixel background, matched to the classes as
  the task matches its clusters (:func:`saliency_only`);
* ``saliency_only`` for the linear probe: the probe is fitted on per-pixel [saliency, colour]
  features (:class:`InputFeatures`) instead of a network's;
* ``prior_only``: the prior the method is trained on, its ids scored as clusters (Hungarian when it has
  one id per class, else majority vote, as ``make_priors.py`` scores it) (:func:`prior_only`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from usgs.evaluation.features import FeatureSource
from usgs.evaluation.report import TaskResult
from usgs.metrics import Matching, SegmentationMetric
from usgs.nets.dense_outputs import DenseOutputs

IGNORE_INDEX = 255


def salient(batch: dict[str, Any], key: str) -> Tensor:
    """float [B,H,W]: 1 where the input saliency ``batch[key]`` is 1 (0 and ignore 255 are not salient)."""
    if key not in batch:
        raise KeyError(f"control=saliency_only: the batch has no {key!r} (the method's saliency_key); keys: "
                       f"{sorted(batch)}")
    return (batch[key] == 1).float()


class InputFeatures(FeatureSource):
    """The method's inputs read as dense outputs: features [B,4,H,W] = [saliency, R, G, B] (normalised
    colour of the image), saliency [B,H,W] = the input saliency (0 or 1). No network is run."""

    def __init__(self, loader: Iterable[dict[str, Any]], key: str, name: str = "inputs",
                 progress: bool = False) -> None:
        super().__init__(nn.Identity(), loader, torch.device("cpu"), cache_mb=0.0, name=name, progress=progress)
        self.key = key

    def _run(self) -> Iterator[tuple[dict[str, Any], DenseOutputs]]:
        for batch in self.loader:
            sal = salient(batch, self.key)
            yield batch, DenseOutputs(torch.cat([sal.unsqueeze(1), batch["image"].float()], dim=1), sal)


def _score_maps(task: str, variant: str, maps: Iterable[tuple[dict[str, Any], Tensor]], num_classes: int,
                num_predictions: int, matching: Matching, class_names: Sequence[str]) -> TaskResult:
    metric = SegmentationMetric(num_classes, num_predictions, matching)
    result = TaskResult(task, class_names or [str(c) for c in range(num_classes)])
    for batch, pred in maps:
        metric.update(pred, batch["mask"])
        result.add_examples(variant, batch, pred)
    result.add_scores(variant, [metric.compute()])
    return result


def saliency_only(evaluation: Iterable[dict[str, Any]], key: str, num_classes: int, task: str = "kmeans",
                  matching: Matching = "hungarian_iou", class_names: Sequence[str] = ()) -> TaskResult:
    """``<task>/saliency_only``: salient pixels = cluster 1, the rest = cluster 0, matched by ``matching``
    among ``num_classes`` clusters (as the k-means protocol's k - 1 salient clusters + background)."""
    maps = ((batch, salient(batch, key).long()) for batch in evaluation)
    return _score_maps(task, "saliency_only", maps, num_classes, num_classes, matching, class_names)


def prior_only(evaluation: Iterable[dict[str, Any]], num_classes: int, num_labels: int, task: str = "kmeans",
               matching: Matching = "hungarian_iou", class_names: Sequence[str] = ()) -> TaskResult:
    """``<task>/prior_only``: the prior's ids (``batch["prior"]``, 255 = no label -> not scored) as clusters;
    ``matching`` when the prior has one id per class, else majority vote."""
    def maps() -> Iterator[tuple[dict[str, Any], Tensor]]:
        for batch in evaluation:
            if "prior" not in batch:
                raise KeyError(f"control=prior_only: the batch has no 'prior' (set data.prior); keys: {sorted(batch)}")
            prior = batch["prior"].long()
            unlabelled = prior == IGNORE_INDEX
            yield {**batch, "mask": batch["mask"].masked_fill(unlabelled, IGNORE_INDEX)}, prior.masked_fill(unlabelled, 0)

    rule: Matching = matching if num_labels == num_classes else "majority"
    return _score_maps(task, "prior_only", maps(), num_classes, num_labels, rule, class_names)
