"""Dense outputs of a trained module over a loader, for the evaluation protocols.

How one batch is read (``embed`` or ``predict``) lives in :mod:`usgs.nets.dense_outputs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from usgs.evaluation.feature_store import FeatureStore
from usgs.evaluation.pixel_features import PixelFeatures
from usgs.nets.dense_outputs import DenseOutputs, dense_outputs


def _to_cpu(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in batch.items()}


@dataclass
class PixelOutputs:
    """One batch's outputs as the protocols read them: features at image size (held at the network's
    resolution, :class:`PixelFeatures`) and saliency probabilities [B,H,W] or None."""

    features: PixelFeatures
    saliency: Tensor | None


class FeatureSource:
    """Re-iterable ``(batch, PixelOutputs)`` over a loader in a fixed order, outputs on the CPU.

    The first pass runs the network; its outputs are kept (features as float16) while they fit in
    ``cache_mb``, so protocols that need two passes (fit, then predict) pay for one forward pass on
    small evaluation splits and for two, without running out of memory, on large ones. Features are
    kept at the network's resolution (a frozen ViT's patch map is p^2 times smaller than the image,
    so hundreds of images fit) and read at image size through :class:`PixelFeatures`, which
upsamples bilinearly (and normalises) only what a protocol reads. ``layer`` picks the
    features (see :func:`dense_outputs`); saliency is cached in float32 because protocols take its
    logit. ``flip`` averages each output with that of the horizontally mirrored image (STEGO's
    test-time flip). The loader must not shuffle (batches are matched across passes by position).
    With ``progress``, every pass shows a bar named ``name`` (a pass's consumer, e.g. the scoring
    with its dense CRF, runs inside it, so the bar covers that work too).

    With a ``store`` (:class:`usgs.evaluation.feature_store.FeatureStore`), outputs live on disk
    instead (``cache_mb`` is then unused): batches whose chunks are stored are read from it, the
    others computed and added, so only the first pass ever (over every run with the same identity)
    runs the network and RAM holds one batch whatever the split's size. ``start`` is the store
    position of the loader's first image (a shard's loader covers a slice of the split).
    """

    def __init__(self, module: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device,
                 cache_mb: float = 1024.0, flip: bool = False, layer: str = "embedding",
                 name: str = "features", progress: bool = False, store: FeatureStore | None = None,
                 start: int = 0) -> None:
        self.module = module
        self.flip = flip
        self.layer = layer
        self.loader = loader
        self.device = device
        self.cache_bytes = cache_mb * 2**20
        self.name = name
        self.progress = progress
        self._passes = 0
        self.store, self.start = store, int(start)
        self._cache: list[tuple[dict[str, Any], DenseOutputs]] | None = None

    def bar(self, iterable: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
        """``iterable`` with a progress bar when ``progress`` is on (also for the tasks' own loops)."""
        return tqdm(iterable, desc=desc, total=total, unit="it", leave=False, disable=not self.progress)

    def _run(self) -> Iterator[tuple[dict[str, Any], DenseOutputs]]:
        self.module.eval()  # frozen network, BN statistics included
        for batch in self.loader:
            yield _to_cpu(batch), self._forward(batch)

    def _forward(self, batch: dict[str, Any]) -> DenseOutputs:
        """The network's outputs of one batch on the CPU (test-time flip included)."""
        image = batch["image"].to(self.device)
        out = dense_outputs(self.module, image, self.layer)
        if self.flip:  # test-time flip: average with the mirrored image's outputs, mirrored back
            mirrored = dense_outputs(self.module, image.flip(-1), self.layer)
            sal = None if out.saliency is None else (out.saliency + mirrored.saliency.flip(-1)) / 2
            out = DenseOutputs(self._unit((out.features + mirrored.features.flip(-1)) / 2), sal)
        sal = out.saliency.cpu() if out.saliency is not None else None
        return DenseOutputs(out.features.cpu(), sal)

    def _stored(self) -> Iterator[tuple[dict[str, Any], DenseOutputs]]:
        """Outputs read from the store where it has them, else computed and added to it."""
        assert self.store is not None
        self.module.eval()
        position = self.start
        for batch in self.loader:
            indices = range(position, position + batch["image"].shape[0])
            position = indices.stop
            if self.store.missing(indices):
                out = self._forward(batch)
                for k, i in enumerate(indices):
                    self.store.add(i, out.features[k], None if out.saliency is None else out.saliency[k])
                # the values a later read gives back (float16), so every pass sees the same numbers
                out = DenseOutputs(out.features.half().float(), out.saliency)
            else:
                out = DenseOutputs(*self.store.read(indices))
            yield _to_cpu(batch), out

    @property
    def num_images(self) -> int | None:
        """Images per pass (the loader's dataset length), or None when the loader has no dataset length."""
        try:
            return len(self.loader.dataset)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            return None

    def fill(self) -> int:
        """One pass that only makes sure the store holds this loader's images; returns their count."""
        if self.store is None:
            raise ValueError("FeatureSource.fill needs a store")
        return sum(int(batch["image"].shape[0]) for batch, _ in self._stored())

    def __iter__(self) -> Iterator[tuple[dict[str, Any], PixelOutputs]]:
        self._passes += 1
        total = len(self._cache) if self._cache is not None else _length(self.loader)
        what = "cached features" if self._cache is not None else "network"
        if self.store is not None:
            what = "feature cache on disk" if self.store.complete() else "network -> feature cache on disk"
        yield from self.bar(self._iterate(), f"{self.name} pass {self._passes} ({what})", total)

    def _iterate(self) -> Iterator[tuple[dict[str, Any], PixelOutputs]]:
        if self.store is not None:
            for batch, out in self._stored():
                yield batch, self._at_image_size(batch, out)
            return
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

    def _at_image_size(self, batch: dict[str, Any], out: DenseOutputs) -> PixelOutputs:
        """Features coarser than the image (a ViT's patch map) read as upsampled bilinearly (and
        normalised again for the embedding layer)."""
        features = PixelFeatures(out.features.float(), batch["image"].shape[-2:], unit=self.layer == "embedding")
        return PixelOutputs(features, out.saliency)


def salient_prototypes(features: Tensor | PixelFeatures, saliency: Tensor, logit_threshold: float = 0.5,
                       logit_weighted: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """One prototype per image from its predicted saliency, as MaskContrast's evaluation code does.

    ``segmentation/utils/kmeans_utils.py`` and ``retrieval_utils.py`` of the original sum the pixel
    features weighted by the saliency *logit* where the logit exceeds 0.5 (``sal * (sal > 0.5)`` on
    the un-squashed output), then L2-normalise. ``logit_weighted=False`` gives the plain mean over the
    foreground; ``logit_threshold=0`` is probability > 0.5.

    Args:
        features: [B,D,H,W] (a tensor or :class:`PixelFeatures`); saliency: probabilities [B,H,W] (their logit is recovered, |logit| <= 16).
    Returns:
        prototypes [B,D] (unit rows, zero rows without foreground), valid [B] bool, foreground [B,H,W] bool.
    """
    logit = torch.logit(saliency.float(), eps=1e-7)
    foreground = logit > logit_threshold
    weight = torch.where(foreground, logit if logit_weighted else torch.ones_like(logit), torch.zeros_like(logit))
    sums = PixelFeatures.of(features).pool(weight.unsqueeze(1))[:, 0]
    return F.normalize(sums, dim=1), foreground.flatten(1).any(1), foreground


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
