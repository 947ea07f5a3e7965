"""Grad-CAM (Selvaraju et al., ICCV 2017) for every ground-truth class of an image.

``cam_c = ReLU(sum_k w_ck A_k)`` with ``w_ck`` the spatial mean of ``d score_c / d A_k`` at a chosen
layer ``A``; each map is upsampled (bilinear) to the network's input size and min-max normalised,
``(cam - min) / (max - min)``, so it lies in [0, 1] -- the seed's ``src/seed/grad_cam.py``
(``normalize=True``). ``normalize="max"`` divides by the maximum only (the CAM convention of
Araslanov & Roth's code). The default layer is the last ReLU of the VGG16-BN features
(``backbone.features.42`` in :class:`usgs.methods.classifier.ImageClassifier`), the seed's
``target_layer: '42'``: the deepest layer that still has spatial resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name`` (``model.named_modules()`` spelling); error lists candidates."""
    modules = dict(model.named_modules())
    if name not in modules:
        candidates = [n for n, m in modules.items() if isinstance(m, (nn.ReLU, nn.Conv2d)) or n.count(".") == 0]
        raise KeyError(f"Grad-CAM layer {name!r} not found in {type(model).__name__}; valid names include "
                       f"{candidates[-12:]}")
    return modules[name]


class GradCAM:
    """Grad-CAM maps of a classifier ``model: image [B,3,H,W] -> class scores [B,C]`` at ``layer``.

    ``__call__(image [B,3,H,W], labels [B,C]) -> cams [B,C,H,W]`` in [0, 1]; classes absent from
    ``labels`` get all-zero maps. Batch norm must be in eval mode so that images do not interact
    (the model is switched to eval for the call and restored after). ``normalize``: ``"minmax"``
    (the seed) or ``"max"``.
    """

    def __init__(self, model: nn.Module, layer: str, normalize: str = "minmax") -> None:
        if normalize not in _NORMALIZERS:
            raise ValueError(f"normalize must be one of {sorted(_NORMALIZERS)}, got {normalize!r}")
        self.model = model
        self.layer_name = layer
        self.layer = find_layer(model, layer)
        self.normalize = _NORMALIZERS[normalize]

    def __call__(self, image: Tensor, labels: Tensor) -> Tensor:
        captured: list[Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        was_training = self.model.training
        self.model.eval()
        try:
            # Works inside a validation loop too: inference mode off, and a normal (cloned) input
            # whose gradient makes every activation differentiable, even in a frozen backbone.
            with torch.inference_mode(False), torch.enable_grad():
                scores = self.model(image.detach().clone().requires_grad_(True))
                if not captured:
                    raise RuntimeError(f"layer {self.layer_name!r} was not used in the forward pass")
                acts = captured[-1]
                if scores.ndim != 2 or scores.shape != labels.shape:
                    raise ValueError(f"model scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ")
                cams = torch.zeros(labels.shape + image.shape[-2:], device=image.device)
                present = [int(c) for c in torch.nonzero(labels.sum(0) > 0).flatten()]
                for i, c in enumerate(present):
                    # Images are independent (eval BN), so the gradient of the batch sum is per image.
                    (grad,) = torch.autograd.grad(scores[:, c].sum(), acts, retain_graph=i < len(present) - 1)
                    weights = grad.mean(dim=(2, 3), keepdim=True)
                    cam = F.relu((weights * acts).sum(1, keepdim=True).detach())
                    cams[:, c] = F.interpolate(cam, size=image.shape[-2:], mode="bilinear",
                                               align_corners=False)[:, 0]
        finally:
            handle.remove()
            self.model.train(was_training)
        return self.normalize(cams) * (labels > 0)[:, :, None, None]


def max_normalize(cams: Tensor) -> Tensor:
    """[B,C,H,W] divided by each map's maximum (all-zero maps stay zero)."""
    return cams / cams.flatten(2).amax(-1).clamp_min(1e-5)[:, :, None, None]


def minmax_normalize(cams: Tensor) -> Tensor:
    """[B,C,H,W] mapped to [0, 1] per map, ``(x - min) / (max - min)`` (constant maps become zero)."""
    shifted = cams - cams.flatten(2).amin(-1)[:, :, None, None]
    top = shifted.flatten(2).amax(-1)[:, :, None, None]
    # the seed divides by the maximum with no epsilon: tiny maps of a weak class still span [0, 1]
    return torch.where(top > 0, shifted / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(shifted))


_NORMALIZERS = {"minmax": minmax_normalize, "max": max_normalize}


def binarize(cams: Tensor, threshold: float = 0.4) -> Tensor:
    """Binary attention masks (bool, same shape): ``cams > threshold`` (the seed's strict 0.4 cut)."""
    return cams > threshold
