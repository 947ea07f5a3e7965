"""Dense outputs of a trained module over a loader, for the evaluation protocols.

How one batch is read (``embed`` or ``predict``) lives in :mod:`usgs.methods.dense_outputs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from usgs.methods.dense_outputs import DenseOutputs, dense_outputs


def _to_cpu(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in batch.items()}


def _at_image_size(batch: dict[str, Any], out: DenseOutputs) -> DenseOutputs:
    """Features coarser than the image (a ViT's patch map) upsampled bilinearly and re-normalised."""
    size = batch["image"].shape[-2:]
    if out.features.shape[-2:] == size:
        return out
    features = F.interpolate(out.features.float(), size=size, mode="bilinear", align_corners=False)
    return DenseOutputs(F.normalize(features, dim=1), out.saliency)


class FeatureSource:
    """Re-iterable ``(batch, DenseOutputs)`` over a loader in a fixed order, outputs on the CPU.

    The first pass runs the network; its outputs are kept (features as float16) while they fit in
    ``cache_mb``, so protocols that need two passes (fit, then predict) pay for one forward pass on
    small evaluation splits and for two, without running out of memory, on large ones. Features are
    kept at the network's resolution (a frozen ViT's patch map is p^2 times smaller than the image,
    so hundreds of images fit) and upsampled to the image as they are read. ``flip`` averages each
    output with that of the horizontally mirrored image (STEGO's test-time flip).
    The loader must not shuffle (batches are matched across passes by position).
    """

    def __init__(self, module: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device,
                 cache_mb: float = 1024.0, flip: bool = False) -> None:
        self.module = module
        self.flip = flip
        self.loader = loader
        self.device = device
        self.cache_bytes = cache_mb * 2**20
        self._cache: list[tuple[dict[str, Any], DenseOutputs]] | None = None

    def _run(self) -> Iterator[tuple[dict[str, Any], DenseOutputs]]:
        self.module.eval()  # frozen network, BN statistics included
        for batch in self.loader:
            out = dense_outputs(self.module, batch["image"].to(self.device))
            if self.flip:  # test-time flip: average with the mirrored image's outputs, mirrored back
                mirrored = dense_outputs(self.module, batch["image"].to(self.device).flip(-1))
                sal = None if out.saliency is None else (out.saliency + mirrored.saliency.flip(-1)) / 2
                out = DenseOutputs(F.normalize(out.features + mirrored.features.flip(-1), dim=1), sal)
            sal = out.saliency.cpu() if out.saliency is not None else None
            yield _to_cpu(batch), DenseOutputs(out.features.cpu(), sal)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], DenseOutputs]]:
        if self._cache is not None:
            for batch, out in self._cache:
                sal = out.saliency.float() if out.saliency is not None else None
                yield batch, _at_image_size(batch, DenseOutputs(out.features.float(), sal))
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
            yield batch, _at_image_size(batch, out)
        self._cache = cache
