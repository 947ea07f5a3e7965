"""STEGO's training set: five crops of every train image, their frozen features and nearest neighbours.

Source: ``mhamilton723/STEGO`` @ 8c1ad0a9: ``src/crop_datasets.py`` (``five_crop`` of each image at
``crop_ratio`` 0.5 of its sides, saved once), ``src/utils.py:165-183`` (``get_transform``: shorter
side to ``res`` with nearest-neighbour resampling, centre crop), ``src/precompute_knns.py`` (global
average of the backbone features, L2-normalised, top 30 by cosine, itself included) and
``src/data.py:520-524`` (the positive is a uniformly drawn one of the ``num_neighbors`` nearest, the
image itself excluded).

Everything is computed once per (data files, backbone weights, settings) into a fingerprinted folder
beside the priors, ``<priors_dir>/<dataset>/train/stego_bank-<hash>/``, as ``.npy`` memory maps:
``masks`` uint8 [N,res,res], ``features`` float16 [N,C,h,w] (or ``images`` uint8 [N,res,res,3] when
features are not cached) and ``knn`` int64 [N,30]. Images are processed ``chunk`` at a time and a
killed build resumes from its last finished chunk; ``manifest.json`` is written last. The kNN search
keeps a running top-k over tiles of ``knn_block`` x ``knn_block`` similarities, so its memory is about
``knn_block x (knn_block + k) x 4 B`` (64 MiB at 4096) plus two ``knn_block x C`` float32 blocks of
pooled features, whatever N is (bench: ``python -m usgs.methods.stego_data`` measures it).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from usgs.atomic import atomic_write
from usgs.data.base import SegmentationDataModule
from usgs.data.samplers import SeededEpochSampler, SeededIndex
from usgs.data.transforms import normalize

log = logging.getLogger(__name__)
KNN_STORED = 30  # precompute_knns.py:90 keeps the top 30


def five_crops(array: np.ndarray, ratio: float) -> list[np.ndarray]:
    """torchvision ``five_crop`` at ``ratio`` of each side: top-left, top-right, bottom-left,
    bottom-right, centre (crop_datasets.py ``five_crops``)."""
    h, w = array.shape[:2]
    ch, cw = int(h * ratio), int(w * ratio)
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (top, left)]
    return [array[y:y + ch, x:x + cw] for y, x in corners]


def resize_center_crop(array: np.ndarray, res: int) -> np.ndarray:
    """Shorter side to ``res`` (nearest neighbour, as STEGO's get_transform for images and labels),
    then the central ``res`` x ``res`` crop."""
    h, w = array.shape[:2]
    nh, nw = (res, max(res, int(res * w / h))) if h <= w else (max(res, int(res * h / w)), res)
    resized = cv2.resize(array, (nw, nh), interpolation=cv2.INTER_NEAREST)
    top, left = int(round((nh - res) / 2.0)), int(round((nw - res) / 2.0))
    return resized[top:top + res, left:left + res]


def frozen_features(backbone: nn.Module, image: Tensor) -> Tensor:
    """The backbone's ``out_key`` map of a normalised image batch, float32. A ViT input is resized to
    the next multiple of its patch size first (STEGO asserts divisibility; DINOv2's 14 px patches do
    not divide 320)."""
    patch = getattr(backbone, "patch_size", None)
    if patch and (image.shape[-2] % patch or image.shape[-1] % patch):
        size = (math.ceil(image.shape[-2] / patch) * patch, math.ceil(image.shape[-1] / patch) * patch)
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    return backbone(image)[backbone.out_key].float()  # type: ignore[index]


def knn_chunked(pooled: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
    """Indices ``[N,k]`` of the k most cosine-similar rows of ``pooled [N,C]`` (L2-normalised), best
    first, each row included; a running top-k over ``block`` x ``block`` similarity tiles."""
    n, k = pooled.shape[0], min(k, pooled.shape[0])
    out = np.empty((n, k), dtype=np.int64)
    for q0 in range(0, n, block):
        q = torch.from_numpy(np.asarray(pooled[q0:q0 + block], dtype=np.float32))
        best_s = torch.full((q.shape[0], 0), -math.inf)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
        for d0 in range(0, n, block):
            d = torch.from_numpy(np.asarray(pooled[d0:d0 + block], dtype=np.float32))
            sims = torch.cat([best_s, q @ d.T], dim=1)  # the running top-k, then this tile
            best_s, pos = sims.topk(min(k, sims.shape[1]), dim=1)
            kept = best_i.shape[1]
            best_i = torch.where(pos < kept, best_i.gather(1, pos.clamp(max=max(kept - 1, 0))) if kept else pos,
                                 pos - kept + d0)
        out[q0:q0 + q.shape[0]] = best_i.numpy()
    return out


def _state_digest(module: nn.Module) -> str:
    """sha256 of a module's state dict: the bank is rebuilt for other backbone weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class _Prefix:
    """The first ``n`` samples of a raw dataset (``load_checked`` only)."""

    def __init__(self, dataset: Any, n: int) -> None:
        self.dataset, self.n = dataset, n

    def __len__(self) -> int:
        return self.n

    def load_checked(self, index: int) -> dict[str, np.ndarray]:
        return self.dataset.load_checked(index)


class CropBank:
    """The five-crop training set of a DataModule's train split (see the module docstring)."""

    def __init__(self, datamodule: SegmentationDataModule, backbone: nn.Module, cache_root: str | Path,
                 res: int = 224, crop_ratio: float = 0.5, crop_type: str | None = "five",
                 cache_features: bool = True, chunk: int = 16,
                 knn_block: int = 4096, device: torch.device | str = "cpu", max_images: int | None = None) -> None:
        raw: Any = datamodule.dataset("train", transform=None)
        identity = datamodule.data_identity(raw)
        if max_images is not None and max_images < len(raw):  # the first images (budget curves, tests)
            raw = _Prefix(raw, int(max_images))
        if crop_type not in ("five", None):
            raise ValueError(f"crop_type must be 'five' or null (whole images), got {crop_type!r}")
        self.per_image = 5 if crop_type == "five" else 1
        config = {"max_images": max_images, "crop_type": crop_type, "res": res, "crop_ratio": crop_ratio, "cache_features": cache_features, "k": KNN_STORED,
                  "backbone": type(backbone).__name__, "weights": _state_digest(backbone),
                  "data": identity}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
        self.folder = Path(cache_root) / datamodule.name / "train" / f"stego_bank-{digest}"
        self.cache_features, self.res = cache_features, res
        if not (self.folder / "manifest.json").is_file():
            self._build(raw, backbone, config, crop_ratio, chunk, knn_block, torch.device(device))
        self.masks = np.load(self.folder / "masks.npy", mmap_mode="r")
        self.inputs = np.load(self.folder / ("features.npy" if cache_features else "images.npy"), mmap_mode="r")
        self.knn = np.load(self.folder / "knn.npy")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def _build(self, raw: Any, backbone: nn.Module, config: dict[str, Any], ratio: float, chunk: int,
               knn_block: int, device: torch.device) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / "config.json", json.dumps(config, indent=1, default=str))
        n, res, per = self.per_image * len(raw), self.res, self.per_image
        crop = (lambda a: five_crops(a, ratio)) if per == 5 else (lambda a: [a])
        backbone = backbone.to(device).eval()
        with torch.no_grad():
            probe = frozen_features(backbone, torch.zeros(1, 3, res, res, device=device))
        shapes = {"masks": ((n, res, res), np.uint8), "pooled": ((n, probe.shape[1]), np.float32),
                  "features" if self.cache_features else "images":
                  ((n, *probe.shape[1:]), np.float16) if self.cache_features else ((n, res, res, 3), np.uint8)}
        progress = self.folder / "progress.json"
        done = json.loads(progress.read_text())["images"] if progress.is_file() else 0
        arrays = {k: np.lib.format.open_memmap(self.folder / f"{k}.npy", mode="r+" if done else "w+",
                                               dtype=dt, shape=shape) for k, (shape, dt) in shapes.items()}
        for start in tqdm(range(done, len(raw), chunk), desc="STEGO five-crop bank", unit="chunk"):
            crops, masks = [], []
            for i in range(start, min(start + chunk, len(raw))):
                sample = raw.load_checked(i)
                crops += [resize_center_crop(c, res) for c in crop(sample["image"])]
                mask = sample.get("mask", np.full(sample["image"].shape[:2], 255, np.uint8))
                masks += [resize_center_crop(c, res) for c in crop(mask)]
            lo, hi = per * start, per * start + len(crops)
            with torch.no_grad():
                feats = frozen_features(backbone, torch.stack([normalize(c) for c in crops]).to(device))
            arrays["masks"][lo:hi] = np.stack(masks)
            arrays["pooled"][lo:hi] = F.normalize(feats.mean((2, 3)), dim=1).cpu().numpy()
            if self.cache_features:
                arrays["features"][lo:hi] = feats.cpu().half().numpy()
            else:
                arrays["images"][lo:hi] = np.stack(crops)
            for array in arrays.values():
                array.flush()
            atomic_write(progress, json.dumps({"images": min(start + chunk, len(raw))}))
        knn = knn_chunked(arrays["pooled"], KNN_STORED, knn_block)
        buf = io.BytesIO()
        np.save(buf, knn)
        atomic_write(self.folder / "knn.npy", buf.getvalue())
        atomic_write(self.folder / "manifest.json", json.dumps({"crops": n, "images": len(raw), **config},
                                                               indent=1, default=str))
        progress.unlink(missing_ok=True)
        log.info("STEGO bank: %d crops of %d images in %s", n, len(raw), self.folder)


class CropPairs(Dataset):
    """Item ``(index, seed)``: crop ``index`` and one of its ``num_neighbors`` nearest crops, drawn with a
    generator seeded by ``seed`` (never from the masks). Keys: ``input``/``input_pos`` (float16 features
    or normalised images), ``mask`` int64 [res,res] (read by the linear probe only), ``index``."""

    def __init__(self, bank: CropBank, num_neighbors: int = 7) -> None:
        if not 1 <= num_neighbors < bank.knn.shape[1]:
            raise ValueError(f"num_neighbors must be in [1, {bank.knn.shape[1] - 1}], got {num_neighbors}")
        self.bank, self.num_neighbors = bank, num_neighbors

    def __len__(self) -> int:
        return len(self.bank)

    def _input(self, i: int) -> Tensor:
        x = np.asarray(self.bank.inputs[i])
        return torch.from_numpy(x.astype(np.float32)) if self.bank.cache_features else normalize(x)

    def __getitem__(self, item: SeededIndex) -> dict[str, Any]:
        index, seed = item
        generator = torch.Generator().manual_seed(seed)
        pos = int(self.bank.knn[index][int(torch.randint(1, self.num_neighbors + 1, (), generator=generator))])
        return {"input": self._input(index), "input_pos": self._input(pos), "index": index,
                "mask": torch.from_numpy(np.asarray(self.bank.masks[index]).astype(np.int64))}


class StegoDataModule(pl.LightningDataModule):
    """A DataModule whose train loader gives :class:`CropPairs`; val/test and every attribute are the
    wrapped one's. Built by :meth:`usgs.methods.stego.Stego.training_data`."""

    def __init__(self, inner: SegmentationDataModule, pairs: Any) -> None:
        super().__init__()
        self.inner, self._pairs, self._train = inner, pairs, None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("inner", "_pairs", "_train"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def setup(self, stage: str | None = None) -> None:
        self.inner.setup(stage)
        if stage in ("fit", None) and self._train is None:
            self._train = self._pairs()

    def train_dataloader(self) -> DataLoader:
        assert self._train is not None
        sampler = SeededEpochSampler(len(self._train), self.inner.seed)
        batch = self.inner.batch_size
        return DataLoader(self._train, batch_size=batch, sampler=sampler, drop_last=len(self._train) >= batch,
                          num_workers=self.inner.num_workers, pin_memory=self.inner.pin_memory,
                          generator=torch.Generator().manual_seed(self.inner.seed))

    def val_dataloader(self) -> DataLoader:
        return self.inner.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.inner.test_dataloader()


if __name__ == "__main__":  # peak memory of the kNN search against N (stated in the module docstring)
    import resource
    import sys

    n, c, block = (int(a) for a in sys.argv[1:4]) if len(sys.argv) > 3 else (40_000, 384, 4096)
    x = np.lib.format.open_memmap("/tmp/stego_knn_bench.npy", mode="w+", dtype=np.float32, shape=(n, c))
    for i in range(0, n, block):
        x[i:i + block] = F.normalize(torch.randn(min(block, n - i), c), dim=1).numpy()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    knn_chunked(x, KNN_STORED, block)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"N={n} C={c} block={block}: peak RSS {after / 1024:.0f} MiB (before the search {before / 1024:.0f} MiB)")
