"""Dense outputs of a trained module over a loader, for the evaluation protocols.

How one batch is read (``embed`` or ``predict``) lives in :mod:`usgs.methods.dense_outputs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from usgs.methods.dense_outputs import DenseOutputs, dense_outputs


def _to_cpu(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in batch.items()}


class FeatureSource:
    """Re-iterable ``(batch, DenseOutputs)`` over a loader in a fixed order, outputs on the CPU.

    The first pass runs the network; its outputs are kept (features as float16) while they fit in
    ``cache_mb``, so protocols that need two passes (fit, then predict) pay for one forward pass on
    small evaluation splits and for two, without running out of memory, on large ones.
    The loader must not shuffle (batches are matched across passes by position).
    With ``progress``, every pass shows a bar named ``name`` (a pass's consumer, e.g. the scoring
    with its dense CRF, runs inside it, so the bar covers that work too).
    """

    def __init__(self, module: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device,
                 cache_mb: float = 1024.0, name: str = "features", progress: bool = False) -> None:
        self.module = module
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
            out = dense_outputs(self.module, batch["image"].to(self.device))
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


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
