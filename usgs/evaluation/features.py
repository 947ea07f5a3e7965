"""Dense outputs of a trained module for the evaluation protocols.

A module exposing ``embed(image) -> (embeddings [B,D,H,W], saliency logits [B,H,W] | None)``
(MaskContrast) is read through it; any other :class:`SegmentationModule` is read through
``predict``: logits become softmax features, id maps become one-hot features, without saliency.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class DenseOutputs:
    """features float [B,D,H,W] (L2-normalised per pixel); saliency float [B,H,W] in [0,1] or None."""

    features: Tensor
    saliency: Tensor | None


@torch.no_grad()
def dense_outputs(module: nn.Module, image: Tensor) -> DenseOutputs:
    """Features (and saliency probabilities when the module predicts them) of ``image`` [B,3,H,W]."""
    embed = getattr(module, "embed", None)
    if callable(embed):
        features, sal_logits = embed(image)
        saliency = torch.sigmoid(sal_logits) if sal_logits is not None else None
        return DenseOutputs(F.normalize(features.float(), dim=1), saliency)
    predict = getattr(module, "predict", None)
    if not callable(predict):
        raise TypeError(f"{type(module).__name__} has neither embed(image) nor predict(image)")
    out = predict(image)
    if out.dim() == 4:
        features = out.float().softmax(dim=1)
    elif out.dim() == 3:
        num = int(getattr(getattr(module, "val_metric", None), "num_predictions", int(out.max()) + 1))
        features = F.one_hot(out.long(), num).permute(0, 3, 1, 2).float()
    else:
        raise ValueError(f"predict returned shape {tuple(out.shape)}; expected [B,H,W] or [B,K,H,W]")
    return DenseOutputs(F.normalize(features, dim=1), None)


def _to_cpu(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in batch.items()}


class FeatureSource:
    """Re-iterable ``(batch, DenseOutputs)`` over a loader in a fixed order, outputs on the CPU.

    The first pass runs the network; its outputs are kept (features as float16) while they fit in
    ``cache_mb``, so protocols that need two passes (fit, then predict) pay for one forward pass on
    small evaluation splits and for two, without running out of memory, on large ones.
    The loader must not shuffle (batches are matched across passes by position).
    """

    def __init__(self, module: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device,
                 cache_mb: float = 1024.0) -> None:
        self.module = module
        self.loader = loader
        self.device = device
        self.cache_bytes = cache_mb * 2**20
        self._cache: list[tuple[dict[str, Any], DenseOutputs]] | None = None

    def _run(self) -> Iterator[tuple[dict[str, Any], DenseOutputs]]:
        self.module.eval()  # frozen network, BN statistics included
        for batch in self.loader:
            out = dense_outputs(self.module, batch["image"].to(self.device))
            sal = out.saliency.cpu() if out.saliency is not None else None
            yield _to_cpu(batch), DenseOutputs(out.features.cpu(), sal)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], DenseOutputs]]:
        if self._cache is not None:
            for batch, out in self._cache:
                sal = out.saliency.float() if out.saliency is not None else None
                yield batch, DenseOutputs(out.features.float(), sal)
            return
        cache: list[tuple[dict[str, Any], DenseOutputs]] | None = []
        used = 0.0
        for batch, out in self._run():
            if cache is not None:
                used += out.features.numel() * 2 + batch["image"].numel() * 4
                if used <= self.cache_bytes:
                    sal = out.saliency.half() if out.saliency is not None else None
                    cache.append((batch, DenseOutputs(out.features.half(), sal)))
                else:
                    cache = None  # too large: later passes re-run the network
            yield batch, out
        self._cache = cache
