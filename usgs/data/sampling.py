"""Training sampler that favours samples (images or crops) containing rare classes.

The seed's Vaihingen model drew crops with cars more often than their share (cars cover ~1% of the
pixels); this does the same for any dataset through per-sample class presence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from usgs.data.base import SegmentationDataset


def class_presence(dataset: SegmentationDataset, num_classes: int) -> np.ndarray:
    """bool [N,C]: class c occurs in sample i (its ``labels`` if given, else its raw mask)."""
    presence = np.zeros((len(dataset), num_classes), dtype=bool)
    for i in range(len(dataset)):
        raw = dataset.load(i)
        if "labels" in raw:
            presence[i] = np.asarray(raw["labels"]) > 0
        else:
            values = np.unique(raw["mask"])
            presence[i, values[values < num_classes]] = True
    return presence


class RareClassSampler(Sampler[int]):
    """Draws ``num_samples`` indices with replacement, weight ``factor`` for samples with a rare class.

    ``presence`` bool [N,C] (see :func:`class_presence`), ``rare_classes`` class ids. Seeded and
    different every epoch (``set_epoch``), so runs are reproducible.
    """

    def __init__(
        self,
        presence: np.ndarray,
        rare_classes: Sequence[int],
        factor: float = 5.0,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        if presence.ndim != 2:
            raise ValueError(f"presence must be bool [N,C], got shape {presence.shape}")
        bad = [c for c in rare_classes if not 0 <= c < presence.shape[1]]
        if bad or factor <= 0:
            raise ValueError(
                f"rare_classes must be in [0, {presence.shape[1]}) and factor > 0, got {bad}, {factor}"
            )
        has_rare = presence[:, list(rare_classes)].any(1) if rare_classes else np.zeros(len(presence), bool)
        self.weights = torch.from_numpy(np.where(has_rare, factor, 1.0))
        self.num_samples = int(num_samples or len(presence))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1  # a fresh draw next epoch even when nobody calls set_epoch
        yield from torch.multinomial(
            self.weights, self.num_samples, replacement=True, generator=generator
        ).tolist()


def rare_class_sampler(dataset: SegmentationDataset, rare_classes: Sequence[int], factor: float = 5.0,
                       num_samples: int | None = None, seed: int = 0) -> RareClassSampler:
    """A :class:`RareClassSampler` over ``dataset``'s class presence: the DataModule's ``train_sampler``.

    Config: ``data.train_sampler: {_target_: usgs.data.sampling.rare_class_sampler, _partial_: true,
    rare_classes: [4], factor: 10}``. Presence is read once from every raw sample, so datasets whose
    training samples are random crops (Vaihingen) get the presence of one draw per index.
    """
    return RareClassSampler(class_presence(dataset, dataset.num_classes), rare_classes, factor, num_samples, seed)
