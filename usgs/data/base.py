"""Dataset / DataModule contract shared by every dataset of the suite.

Batch dict (collated), identical for every DataModule:
    image     float32 [B,3,H,W]  ImageNet-normalised (see `usgs.data.transforms`)
    mask      int64   [B,H,W]    class ids, 255 = ignore (splits with ground truth)
    saliency  int64   [B,H,W]    optional; 1 = foreground, 0 = background, 255 = ignore
    prior     int64   [B,H,W]    optional (``prior`` set); cluster / class ids, 255 = ignore
    labels    float32 [B,C]      multi-hot image-level labels
    index     int64   [B]        position in the dataset
    name      list[str]          sample ids
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from usgs.data.prior_store import find_prior_dir
from usgs.data.samplers import SeededEpochSampler, SeededIndex, unpadded_distributed_sampler
from usgs.data.splits import SPLITS, overlapping_ids
from usgs.data.transforms import IGNORE_INDEX, MASK_KEYS, normalize
from usgs.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Transform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
_DEFAULT: Any = object()  # sentinel: "the DataModule's transform for this split"


class SegmentationDataset(Dataset, ABC):
    """Base dataset: subclasses set ``ids`` and implement ``load(i)`` returning RAW numpy arrays.

    ``load`` returns ``image`` uint8 [H,W,3] RGB and any of ``mask`` (uint8/int [H,W], 255 = ignore),
    ``saliency`` (uint8 {0,1,255}), ``labels`` (float32 [C]). ``__getitem__`` adds the cached prior,
    validates label values, applies the joint transform and converts to the batch-dict tensors.
    """

    ids: list[str]

    def __init__(self, num_classes: int, transform: Transform | None = None, prior_dir: Path | None = None):
        self.num_classes = int(num_classes)
        self.transform = transform
        self.prior_dir = Path(prior_dir) if prior_dir is not None else None

    @abstractmethod
    def load(self, index: int) -> dict[str, np.ndarray]:
        """Raw arrays of sample ``index`` (no transform, no prior)."""

    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from, for error messages (subclasses name the file)."""
        return f"sample {self.ids[index]!r}"

    def files(self, index: int) -> list[Path]:
        """The files sample ``index`` is read from (none for generated data); subclasses list them."""
        return []

    def check_files(self) -> None:
        """Raise FileNotFoundError naming the missing files of the split (a cheap existence check)."""
        missing = sorted({str(f) for i in range(len(self.ids)) for f in self.files(i) if not f.is_file()})
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} file(s) of this split are missing: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
            )

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the split's files for the prior cache: count + sha256 of (path, size, mtime);
        for generated data (no files), of the ids and two rendered samples."""
        digest, files = hashlib.sha256(), sorted({f for i in range(len(self.ids)) for f in self.files(i)})
        for name in self.ids:
            digest.update(f"id {name}\n".encode())
        for path in files:
            stat = path.stat()
            digest.update(f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}\n".encode())
        if not files and self.ids:  # generated data: two rendered samples stand for the generator
            for index in sorted({0, len(self.ids) - 1}):
                for key, value in sorted(self.load(index).items()):
                    digest.update(key.encode() + np.ascontiguousarray(value).tobytes())
        return {"samples": len(self.ids), "files": len(files), "sha256": digest.hexdigest()}

    def __len__(self) -> int:
        return len(self.ids)

    def load_prior(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        """The cached prior of sample ``index`` as uint8 [H,W]; it must match the image size."""
        assert self.prior_dir is not None
        path = self.prior_dir / f"{self.ids[index]}.png"
        if not path.is_file():
            raise FileNotFoundError(
                f"prior file missing: {path} (for {self.describe(index)}); regenerate the cache"
            )
        prior = np.array(Image.open(path))
        if prior.ndim != 2 or prior.dtype != np.uint8:
            raise DataError(
                f"prior {path} must be a single-channel uint8 PNG, got {prior.dtype} {prior.shape}"
            )
        if prior.shape != shape:
            raise DataError(
                f"prior {path} has size {prior.shape} but the image of {self.describe(index)} has {shape}"
            )
        return prior

    def check_labels(self, index: int, mask: np.ndarray) -> np.ndarray:
        """Validate class ids (< num_classes or 255) and return the mask as uint8."""
        if mask.size and (mask.max() >= self.num_classes or mask.min() < 0):
            values = np.unique(mask)
            bad = values[((values >= self.num_classes) | (values < 0)) & (values != IGNORE_INDEX)]
            if bad.size:
                raise DataError(
                    f"{self.describe(index)}: label value(s) {bad.tolist()} out of range; expected "
                    f"0..{self.num_classes - 1} or {IGNORE_INDEX} (ignore)"
                )
        return mask.astype(np.uint8, copy=False)

    # Image swaps a transform may ask for in one sample before the dataset gives up (the original
    # MaskContrast loops forever; a split where no image passes would hang a worker).
    max_swaps: ClassVar[int] = 1000

    def __getitem__(self, item: int | SeededIndex) -> dict[str, Any]:
        """Sample ``item``: an index, or ``(index, seed)`` from the training sampler, in which case
        the transform draws from a torch generator seeded with ``seed`` and nothing else.

        A transform that returns None rejects the image (MaskContrast's ``swap_after`` rule): a
        random other index is drawn from the same generator and offered to its ``redraw``, so the
        swap is as deterministic as the crops; the sample then carries the swapped-in index."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        first = index
        raw = self.load_checked(index)
        if self.transform is None:
            return self.to_tensors(index, raw)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):  # caller's generator untouched
            if seed is not None:
                torch.manual_seed(seed)
            out = self.transform(raw)
            for _ in range(self.max_swaps):
                if out is not None:
                    break
                index = int(torch.randint(len(self), ()))
                out = self.transform.redraw(self.load_checked(index))  # type: ignore[attr-defined]
        if out is None:
            raise RuntimeError(f"{type(self.transform).__name__} rejected {self.max_swaps} swapped-in "
                               f"images after {self.describe(first)}")
        return self.to_tensors(index, out)

    def load_checked(self, index: int) -> dict[str, np.ndarray]:
        """``load(index)`` validated (image, mask and saliency values), with the cached prior added."""
        raw = self.load(index)
        image = raw["image"]
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"{self.describe(index)}: image must be uint8 [H,W,3], got {image.dtype} {image.shape}"
            )
        for key in MASK_KEYS:
            if key in raw and raw[key].shape != image.shape[:2]:
                raise DataError(
                    f"{self.describe(index)}: {key} size {raw[key].shape} != image size {image.shape[:2]}"
                )
        if "mask" in raw:
            raw["mask"] = self.check_labels(index, raw["mask"])
        if "saliency" in raw and raw["saliency"].max(initial=0) > 1:
            bad = np.setdiff1d(np.unique(raw["saliency"]), [0, 1, IGNORE_INDEX])
            if bad.size:
                raise DataError(
                    f"{self.describe(index)}: saliency value(s) {bad.tolist()}; expected 0, 1 or 255"
                )
        if self.prior_dir is not None:
            raw["prior"] = self.load_prior(index, image.shape[:2])
        return raw

    def to_tensors(self, index: int, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        """Raw (transformed) arrays -> batch-dict tensors of one sample."""
        sample: dict[str, Any] = {"image": normalize(raw["image"])}
        for key in MASK_KEYS:
            if key in raw:
                sample[key] = torch.from_numpy(
                    raw[key].astype(np.int64)
                )  # astype copies: PIL arrays are read-only
        if "labels" in raw:
            labels = torch.as_tensor(raw["labels"], dtype=torch.float32)
            if labels.shape != (self.num_classes,):
                raise ValueError(
                    f"{self.describe(index)}: labels shape {tuple(labels.shape)} != ({self.num_classes},)"
                )
        elif "mask" in sample:
            labels = torch.zeros(self.num_classes, dtype=torch.float32)
            present = sample["mask"].unique()
            labels[present[present != IGNORE_INDEX]] = 1.0
        else:
            raise ValueError(f"{self.describe(index)}: load() gave neither 'labels' nor 'mask'")
        sample["labels"] = labels
        # Tensors a transform adds under new keys (e.g. the second view of twin training) pass through.
        sample.update({k: v for k, v in raw.items() if k not in sample and isinstance(v, torch.Tensor)})
        sample["index"] = index
        sample["name"] = self.ids[index]
        return sample


class SegmentationDataModule(pl.LightningDataModule, ABC):
    """Base DataModule: splits, dataloaders and the prior lookup; subclasses build the datasets.

    Subclasses set the class constants ``name``, ``class_names``, ``palette`` (uint8 [C,3]) and
    implement ``build_dataset(split, transform, prior_dir)``. ``num_classes`` (from the YAML) is
    checked against ``class_names``.
    """

    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray
    ignore_index: ClassVar[int] = IGNORE_INDEX
    splits: ClassVar[tuple[str, ...]] = SPLITS

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        num_classes: int,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        prior: str | None = None,
        prior_root: str | Path | None = None,
        prior_splits: Sequence[str] = ("train",),
        seed: int = 0,
        train_sampler: Callable[[SegmentationDataset], Sampler[int]] | None = None,
    ) -> None:
        super().__init__()
        if num_classes != len(self.class_names):
            raise ConfigError(
                f"data {self.name!r}: num_classes={num_classes} but the dataset has "
                f"{len(self.class_names)} classes {list(self.class_names)}"
            )
        if prior is not None and prior_root is None:
            raise ConfigError(
                f"data {self.name!r}: prior={prior!r} needs prior_root (the priors cache folder)"
            )
        self.root = Path(root) if root is not None else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.prior = prior
        self.prior_root = Path(prior_root) if prior_root is not None else None
        self.prior_splits = tuple(prior_splits)
        self.seed = seed
        self.train_sampler = train_sampler  # e.g. usgs.data.sampling.rare_class_sampler (a partial)
        self._datasets: dict[str, SegmentationDataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def require_root(self, layout: str) -> Path:
        """The dataset root, or a clear error naming it and the expected ``layout``."""
        if self.root is None or not self.root.is_dir():
            raise FileNotFoundError(f"data {self.name!r}: root {self.root} does not exist; expected {layout}")
        return self.root

    @abstractmethod
    def build_dataset(
        self, split: str, transform: Transform | None, prior_dir: Path | None
    ) -> SegmentationDataset:
        """The dataset of ``split`` (already validated) with the given transform and prior folder."""

    def split_ids(self, split: str) -> list[str]:
        """Ids of the units (images, tiles) that ``split`` is made of; the splits share none."""
        return list(self.build_dataset(split, None, None).ids)

    def dataset(self, split: str, transform: Transform | None = _DEFAULT) -> SegmentationDataset:
        """Dataset of ``split``; default transform: train -> train_transform, else eval_transform.

        ``dataset(split, transform=None).load(i)`` gives raw arrays (used by the priors).
        """
        if split not in self.splits:
            raise ConfigError(f"data {self.name!r}: unknown split {split!r}; valid: {list(self.splits)}")
        if transform is _DEFAULT:
            transform = self.train_transform if split == "train" else self.eval_transform
        dataset = self.build_dataset(split, transform, None)
        dataset.check_files()
        if self.prior is not None and split in self.prior_splits:
            assert self.prior_root is not None
            dataset.prior_dir = find_prior_dir(
                self.prior_root, self.name, split, self.prior, self.data_identity(dataset)
            )
        return dataset

    def data_identity(self, dataset: SegmentationDataset) -> dict[str, Any]:
        """What a prior cache of ``dataset`` must have been computed from: data root + file fingerprint."""
        root = str(self.root.resolve()) if self.root is not None else None
        return {"root": root, **dataset.fingerprint()}

    def _cached(self, split: str) -> SegmentationDataset:
        if split not in self._datasets:
            self._datasets[split] = self.dataset(split)
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "", self.splits):
            self._cached(split)
        self.check_splits(list(self._datasets))

    def check_splits(self, splits: Sequence[str]) -> None:
        """Warn when two of ``splits`` share ids (explicit overrides, e.g. one sample tile for all)."""
        shared = overlapping_ids({split: self.split_ids(split) for split in splits})
        for (a, b), ids in shared.items():
            more = ", ..." if len(ids) > 3 else ""
            log.warning(
                "data %r: splits %s and %s share %d id(s) (%s%s): scores on %s are not held out",
                self.name, a, b, len(ids), ", ".join(ids[:3]), more, b,
            )  # fmt: skip

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self._cached(split)
        sampler: Sampler[Any] | None
        if train:  # order and augmentations follow (seed, epoch): see usgs.data.samplers
            base = self.train_sampler(dataset) if self.train_sampler is not None else None
            sampler = SeededEpochSampler(len(dataset), self.seed, base)
        else:  # each image once per process set: DistributedSampler would pad with duplicates
            sampler = unpadded_distributed_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            # drop the ragged last batch (batch-norm statistics), unless that would leave no batch
            # at all (tiny debugging subsets).
            drop_last=train and len(dataset) >= self.batch_size,
            # worker seeds from the run's seed, not from the global generator
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

