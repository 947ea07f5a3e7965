"""Dense outputs of a trained module over a loader, for the evaluation protocols.

How one batch is read (``embed`` or ``predict``) lives in :mod:`usgs.nets.dense_outputs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from usgs.nets.dense_outputs import DenseOutputs, dense_outputs


def _to_cpu(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in batch.items()}


class FeatureSource:
    """Re-iterable ``(batch, DenseOutputs)`` over a loader in a fixed order, outputs on the CPU.

    The first pass runs the network; its outputs are kept (features as float16) while they fit in
    ``cache_mb``, so protocols that need two passes (fit, then predict) pay for one forward pass on
    small evaluation splits and for two, without running out of memory, on large ones. Features are
    kept at the network's resolution (a frozen ViT's patch map is p^2 times smaller than the image,
    so hundreds of images fit) and upsampled to the image as they are read. ``layer`` picks the
    features (see :func:`dense_outputs`); saliency is cached in float32 because protocols take its
    logit. ``flip`` averages each output with that of the horizontally mirrored image (STEGO's
    test-time flip). The loader must not shuffle (batches are matched across passes by position).
    With ``progress``, every pass shows a bar named ``name`` (a pass's consumer, e.g. the scoring
    with its dense CRF, runs inside it, so the bar covers that work too).
    """

    def __init__(self, module: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device,
                 cache_mb: float = 1024.0, flip: bool = False, layer: str = "embedding",
                 name: str = "features", progress: bool = False) -> None:
        self.module = module
        self.flip = flip
        self.layer = layer
        self.loader = loader
        self.device = device
        self.cache_bytes = cache_mb * 2**20
        self.name = name
        self.progress = progress
        self._passes = 0
        self._cache: list[tuple[dict[str, Any], DenseOutputs]] | None = None

    def bar(self, iterable: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
        """``iterable`` with a progress bar when ``progress`` is on (also for the tasks' own loops)."""
        return tqdm(iterable, desc=desc, total=total, unit="it", leave=False, disable=not self.progress)

    def _run(self) -> Iterator[tuple[dict[str, Any], DenseOutputs]]:
        self.module.eval()  # frozen network, BN statistics included
        for batch in self.loader:
            image = batch["image"].to(self.device)
            out = dense_outputs(self.module, image, self.layer)
            if self.flip:  # test-time flip: average with the mirrored image's outputs, mirrored back
                mirrored = dense_outputs(self.module, image.flip(-1), self.layer)
                sal = None if out.saliency is None else (out.saliency + mirrored.saliency.flip(-1)) / 2
                out = DenseOutputs(self._unit((out.features + mirrored.features.flip(-1)) / 2), sal)
            sal = out.saliency.cpu() if out.saliency is not None else None
            yield _to_cpu(batch), DenseOutputs(out.features.cpu(), sal)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], DenseOutputs]]:
        self._passes += 1
        total = len(self._cache) if self._cache is not None else _length(self.loader)
        what = "cached features" if self._cache is not None else "network"
        yield from self.bar(self._iterate(), f"{self.name} pass {self._passes} ({what})", total)

    def _iterate(self) -> Iterator[tuple[dict[str, Any], DenseOutputs]]:
        if self._cache is not None:
            for batch, out in self._cache:
                yield batch, self._at_image_size(batch, DenseOutputs(out.features.float(), out.saliency))
            return
        cache: list[tuple[dict[str, Any], DenseOutputs]] | None = []
        used = 0.0
        for batch, out in self._run():
            if cache is not None:
                used += out.features.numel() * 2 + batch["image"].numel() * 4
                if used <= self.cache_bytes:
                    cache.append((batch, DenseOutputs(out.features.half(), out.saliency)))
                else:
                    cache = None  # too large: later passes re-run the network
            yield batch, self._at_image_size(batch, out)
        self._cache = cache

    def _unit(self, features: Tensor) -> Tensor:
        """Unit-length pixel features for the (normalised) embedding; other layers stay as they are."""
        return F.normalize(features, dim=1) if self.layer == "embedding" else features

    def _at_image_size(self, batch: dict[str, Any], out: DenseOutputs) -> DenseOutputs:
        """Features coarser than the image (a ViT's patch map) upsampled bilinearly."""
        size = batch["image"].shape[-2:]
        if out.features.shape[-2:] == size:
            return out
        features = F.interpolate(out.features.float(), size=size, mode="bilinear", align_corners=False)
        return DenseOutputs(self._unit(features), out.saliency)


def salient_prototypes(features: Tensor, saliency: Tensor, logit_threshold: float = 0.5,
                       logit_weighted: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """One prototype per image from its predicted saliency, as MaskContrast's evaluation code does.

    ``segmentation/utils/kmeans_utils.py`` and ``retrieval_utils.py`` of the original sum the pixel
    features weighted by the saliency *logit* where the logit exceeds 0.5 (``sal * (sal > 0.5)`` on
    the un-squashed output), then L2-normalise. ``logit_weighted=False`` gives the plain mean over the
    foreground; ``logit_threshold=0`` is probability > 0.5.

    Args:
        features: [B,D,H,W]; saliency: probabilities [B,H,W] (their logit is recovered, |logit| <= 16).
    Returns:
        prototypes [B,D] (unit rows, zero rows without foreground), valid [B] bool, foreground [B,H,W] bool.
    """
    logit = torch.logit(saliency.float(), eps=1e-7)
    foreground = logit > logit_threshold
    weight = torch.where(foreground, logit if logit_weighted else torch.ones_like(logit), torch.zeros_like(logit))
    sums = torch.einsum("bdhw,bhw->bd", features.float(), weight)
    return F.normalize(sums, dim=1), foreground.flatten(1).any(1), foreground

def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
