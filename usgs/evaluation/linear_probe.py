"""Linear probe: a 1x1 convolution trained with cross-entropy on frozen dense features.

MaskContrast (Van Gansbeke et al., ICCV 2021, Table 2 "LC"; ``segmentation/linear_finetune.py``)
freezes the whole network in eval mode (``freeze_batchnorm: 'all'``) and replaces the decoder's last
layer (the 32-d projection) by a new 1x1 conv on the 256-channel decoder features: ``layer="decoder"``
here (``layer="embedding"`` probes the L2-normalised embedding instead). A 1x1 conv is a per-pixel
linear classifier, so it is fitted here on pixels sampled from the frozen features of the training
split (``pixels_per_image`` labelled pixels per image, seeded) by full-batch L-BFGS on the convex
softmax regression, where the original runs SGD (lr 0.1, 60 epochs, augmented 512 px crops): the
same kind of minimiser, far cheaper and without a schedule. It is then applied to every pixel of
the evaluation split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usgs.evaluation.features import FeatureSource
from usgs.evaluation.pixel_features import PixelFeatures
from usgs.evaluation.report import Refine, TaskResult, mask_predictions
from usgs.evaluation.row_buffer import RowBuffer
from usgs.metrics import SegmentationMetric

IGNORE_INDEX = 255


def sample_pixels(features: Tensor | PixelFeatures, mask: Tensor, per_image: int, generator: torch.Generator,
                  ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Up to ``per_image`` labelled pixels of each image: (x [n,D], y [n]); features [B,D,H,W] (a tensor
    or :class:`PixelFeatures`), mask [B,H,W]."""
    features = PixelFeatures.of(features)
    xs, ys = [], []
    for b, target in enumerate(mask):
        idx = (target.flatten() != ignore_index).nonzero().squeeze(1)
        if idx.numel() > per_image:
            idx = idx[torch.randperm(idx.numel(), generator=generator)[:per_image]]
        xs.append(features.image(b).gather(idx.unsqueeze(0))[0])
        ys.append(target.flatten()[idx])
    return torch.cat(xs), torch.cat(ys)


def fit_linear(x: Tensor, y: Tensor, num_classes: int, weight_decay: float = 1e-4, max_iter: int = 200) -> nn.Conv2d:
    """Softmax regression (L2 ``weight_decay`` on the weights) by L-BFGS; returned as a 1x1 conv."""
    if x.shape[0] == 0:
        raise ValueError("linear probe: no labelled training pixel (is the split's mask all ignore?)")
    layer = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(x), y) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    conv = nn.Conv2d(x.shape[1], num_classes, 1)
    with torch.no_grad():
        conv.weight.copy_(layer.weight.view(num_classes, -1, 1, 1))
        assert conv.bias is not None
        conv.bias.copy_(layer.bias)
    return conv


class LinearProbe:
    """``evaluate.py task=linear_probe``: frozen features -> 1x1 conv (CE, ignore 255) -> mIoU, per-class IoU.

    Args:
        pixels_per_image: training pixels sampled per training image.
        weight_decay: L2 penalty of the classifier.
        max_iter: L-BFGS iterations.
        seeds: pixel-sampling seeds; the probe is refit per seed and reported as mean and std.
        layer: features probed (:func:`usgs.nets.dense_outputs.dense_outputs`): "decoder" (the
            original's), "embedding" or "projection".
    """

    name = "linear_probe"

    def __init__(self, pixels_per_image: int = 1000, weight_decay: float = 1e-4, max_iter: int = 200,
                 seeds: tuple[int, ...] | list[int] = (0,), layer: str = "decoder") -> None:
        self.pixels_per_image = pixels_per_image
        self.layer = layer
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.seeds = tuple(seeds)

    def run(self, train: FeatureSource, evaluation: FeatureSource, num_classes: int,
            class_names: Sequence[str] = (), refine: Refine | None = None) -> TaskResult:
        generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        capacity = (train.num_images or 0) * self.pixels_per_image  # an upper bound: the sample is held once
        samples = [(RowBuffer(capacity), RowBuffer(capacity)) for _ in self.seeds]
        for batch, out in train:
            for (xs, ys), generator in zip(samples, generators):
                x, y = sample_pixels(out.features, batch["mask"], self.pixels_per_image, generator)
                xs.append(x)
                ys.append(y)
        probes = []
        for xs, ys in train.bar(samples, "linear probe fit per seed"):
            probes.append(fit_linear(xs.rows(), ys.rows(), num_classes, self.weight_decay, self.max_iter))
        metrics = [SegmentationMetric(num_classes) for _ in probes]
        result = TaskResult(self.name, class_names or [str(c) for c in range(num_classes)])
        for batch, out in evaluation:
            for i, (probe, metric) in enumerate(zip(probes, metrics)):
                with torch.no_grad():
                    probs = out.features.linear(probe.weight.flatten(1), probe.bias).softmax(dim=1)
                pred = mask_predictions(probs, batch, refine)
                metric.update(pred, batch["mask"])
                if i == 0:
                    result.add_examples("linear_probe", batch, pred)
        result.add_scores("linear_probe", [m.compute() for m in metrics])
        return result
