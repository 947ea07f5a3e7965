"""The DataModule loaders' samplers: training order and augmentation seeds from (seed, epoch) alone,
and evaluation that scores every image once under DDP.

A resumed run must see the same images, in the same order and with the same random crops, as an
uninterrupted run of the same seed; and nothing a run does besides training (validation, callbacks,
logging) may move the random stream its augmentations draw from. So the order of epoch e is a
permutation drawn from (seed, e), and every position of it carries its own augmentation seed drawn
from (seed, e, position). The dataset seeds a private torch generator with it while it transforms
that sample (:meth:`usgs.data.base.SegmentationDataset.__getitem__`), in the main process or a worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

SeededIndex = tuple[int, int]  # (dataset index, augmentation seed)


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy's SeedSequence hash)."""
    state = np.random.SeedSequence([int(v) % 2**32 for v in values]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class SeededEpochSampler(Sampler[SeededIndex]):
    """Yields ``(index, augmentation seed)``: a permutation of ``range(num_samples)`` per epoch, or the
    indices of ``base`` (e.g. :class:`~usgs.data.sampling.RareClassSampler`) when given.

    Lightning calls ``set_epoch`` before every epoch, also after a resume; without it (a sampler wrapped
    by a distributed one) the epoch counts the iterations.
    """

    def __init__(self, num_samples: int, seed: int, base: Sampler[int] | None = None) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.base = base
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        set_base_epoch: Any = getattr(self.base, "set_epoch", None)
        if callable(set_base_epoch):
            set_base_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else self.num_samples  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[SeededIndex]:
        epoch = self.epoch
        if self.base is not None:
            self.set_epoch(epoch)  # the base sampler draws its own epoch `epoch` too
            order = [int(i) for i in self.base]
        else:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        self.epoch = epoch + 1  # a fresh epoch next time, unless Lightning sets one
        for position, index in enumerate(order):
            yield index, mix_seed(self.seed, epoch, position)


def unpadded_distributed_sampler(dataset: Dataset) -> Sampler[int] | None:
    """Under DDP, a sampler that gives each process every world-size-th sample and no padding.

    Lightning's DistributedSampler repeats samples until every process has as many, so 15 images on
    2 processes would score one image twice. Evaluation only sums per-process confusion matrices at
    the epoch end, so processes may differ by one batch. None (plain order) on one process.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    if torch.distributed.get_world_size() == 1:
        return None
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)
