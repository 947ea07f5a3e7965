"""The dense reading of a trained module, shared by evaluation and network-feature priors.

A module exposing ``embed(image) -> (embeddings [B,D,H,W], saliency logits [B,H,W] | None)``
(MaskContrast) is read through it; any other :class:`SegmentationModule` is read through
``predict``: logits become softmax features, id maps become one-hot features, without saliency.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


@dataclass
class DenseOutputs:
    """features float [B,C,H,W] (L2-normalised per pixel for the "embedding" layer, raw otherwise);
    saliency float [B,H,W] in [0,1] or None."""

    features: Tensor
    saliency: Tensor | None


@torch.no_grad()
def dense_outputs(module: nn.Module, image: Tensor, layer: str = "embedding") -> DenseOutputs:
    """Features of ``layer`` (and saliency probabilities when the module predicts them) of ``image``
    [B,3,H,W]. Layers other than "embedding" need a module with ``layer_features(image, layer)``
    (MaskContrast); any other module is read as below, with a warning."""
    reader = getattr(module, "layer_features", None)
    if layer != "embedding" and callable(reader):
        features, sal_logits = reader(image, layer)
        return DenseOutputs(features.float(), torch.sigmoid(sal_logits.float()))
    if layer != "embedding" and layer not in _WARNED:
        _WARNED.add(layer)
        log.warning("%s has no layer_features: reading its default features instead of %r",
                    type(module).__name__, layer)
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
