"""An on-disk, fingerprinted float16 cache of a network's dense outputs over one dataset split.

Frozen-feature protocols (k-means, linear probe, retrieval; STEGO's kNN) read the same features
many times; a COCO-size split's features do not fit in RAM (ViT-S/8 at 320 px: 1.17 MiB per image,
57 GiB for COCO-Stuff-27's curated train split). This store keeps them on disk, so every pass after
the first reads them (memory-mapped, one chunk at a time) instead of re-running the network, and
RAM holds one batch whatever the split's size.

Layout::

    <root>/<split>-<hash of identity>/
        identity.json             what the features are of (split and its files, module weights,
                                  transform, layer, flip); written first, a folder is never reused
                                  for other features
        chunk-<c>.f16             float16 features of images [c*chunk, (c+1)*chunk), raw, C-order
        chunk-<c>.sal             float32 saliency probabilities of the same images (when predicted)
        chunk-<c>.json            per-image shapes: written LAST, its presence = the chunk is complete

Every file is written atomically (temporary file, then rename), so a killed writer leaves complete
chunks and nothing half-written; chunks depend on the image positions only, so any number of
processes or machines can fill disjoint chunk ranges at once (:func:`shard_chunks`), and a reader
uses every complete chunk. A reader gets float16 values (as float32) whether a chunk was just
computed or read back, so the first pass and later passes see the same numbers.

Use::

    store = FeatureStore(root, identity, num_images=len(dataset))
    store.missing(range(8))                   # True while some image's chunk is absent
    store.add(index, features [C,h,w], saliency [H,W] | None)   # buffered; chunks written when full
    features, saliency = store.read(range(8)) # [B,C,h,w] float32, [B,H,W] float32 or None
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from usgs.atomic import atomic_write

__all__ = ["FeatureStore", "module_fingerprint", "shard_chunks", "store_key"]

CHUNK_IMAGES = 64  # images per chunk file: the unit of atomic writes, resumption and sharding
_FEATURES, _SALIENCY = np.float16, np.float32  # saliency stays float32: protocols take its logit


def store_key(identity: Mapping[str, Any], length: int = 12) -> str:
    """Stable short hash of a JSON-able identity (key order does not matter)."""
    blob = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def module_fingerprint(module: nn.Module) -> dict[str, Any]:
    """Class and sha256 of every parameter and buffer of ``module`` (names, dtypes, shapes, values):
    the identity of the weights whatever file or training run they came from."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"class": f"{type(module).__module__}.{type(module).__qualname__}", "sha256": digest.hexdigest()}


def shard_chunks(num_images: int, shard: tuple[int, int], chunk: int = CHUNK_IMAGES) -> range:
    """Image positions of shard ``i`` of ``n``: the i-th of n contiguous slices of whole chunks."""
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
    chunks = -(-num_images // chunk)
    first, last = i * chunks // n, (i + 1) * chunks // n
    return range(min(first * chunk, num_images), min(last * chunk, num_images))


class FeatureStore:
    """The cache folder of one ``identity`` under ``root`` for a split of ``num_images`` images.

    Args:
        root: folder holding every store (``paths.features_dir``).
        identity: JSON-able description of what is stored; its hash names the folder (with the
            ``split`` entry as a readable prefix) and ``identity.json`` is checked on open.
        num_images: images of the split, in the loader's (unshuffled) order.
        chunk: images per chunk file.
    """

    def __init__(self, root: str | Path, identity: Mapping[str, Any], num_images: int,
                 chunk: int = CHUNK_IMAGES) -> None:
        self.identity = json.loads(json.dumps(dict(identity), sort_keys=True, default=str))
        prefix = str(self.identity.get("split", "features"))
        self.folder = Path(root) / f"{prefix}-{store_key(self.identity)}"
        self.num_images, self.chunk = int(num_images), int(chunk)
        self._buffer: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "identity.json"
        if path.is_file():
            if json.loads(path.read_text()) != self.identity:
                raise RuntimeError(f"feature cache {self.folder} holds other features (identity.json differs); "
                                   "delete the folder")
        else:
            atomic_write(path, json.dumps(self.identity, indent=2, sort_keys=True))

    def _path(self, c: int, suffix: str) -> Path:
        return self.folder / f"chunk-{c:06d}{suffix}"

    def complete(self) -> bool:
        """Whether every chunk of the split is on disk."""
        return not self.missing(range(self.num_images))

    def missing(self, indices: Iterable[int]) -> bool:
        """Whether some image of ``indices`` lies in a chunk that is not (yet) on disk."""
        return any(not self._path(c, ".json").is_file() for c in {i // self.chunk for i in indices})

    def add(self, index: int, features: Tensor, saliency: Tensor | None = None) -> None:
        """Buffer one image's outputs (features [C,h,w], saliency [H,W]); a chunk is written as soon as
        all its images are buffered, so the buffer holds at most one chunk per writer."""
        c = index // self.chunk
        if self._path(c, ".json").is_file():
            return  # another process (or an earlier run) wrote it: same inputs, same features
        sal = None if saliency is None else saliency.detach().cpu().numpy().astype(_SALIENCY)
        self._buffer[index] = (features.detach().cpu().numpy().astype(_FEATURES), sal)
        members = range(c * self.chunk, min((c + 1) * self.chunk, self.num_images))
        if all(i in self._buffer for i in members):
            self._write_chunk(c, [self._buffer.pop(i) for i in members])

    def _write_chunk(self, c: int, items: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
        atomic_write(self._path(c, ".f16"), b"".join(f.tobytes() for f, _ in items))
        has_saliency = items[0][1] is not None
        if has_saliency:
            atomic_write(self._path(c, ".sal"), b"".join(s.tobytes() for _, s in items))  # type: ignore[union-attr]
        meta = {"features": [list(f.shape) for f, _ in items],
                "saliency": [list(s.shape) for _, s in items] if has_saliency else None}
        atomic_write(self._path(c, ".json"), json.dumps(meta))  # last: the chunk is complete

    def read(self, indices: Iterable[int]) -> tuple[Tensor, Tensor | None]:
        """Stacked outputs of ``indices`` (equal shapes, as in one batch): features [B,C,h,w] float32
        (float16 values), saliency [B,H,W] float32 or None. Each chunk file is memory-mapped for the
        read and unmapped after it, so resident memory stays one batch."""
        features, saliency = [], []
        for i in indices:
            f, s = self._read_one(i)
            features.append(f)
            saliency.append(s)
        sal = None if saliency[0] is None else torch.from_numpy(np.stack(saliency))  # type: ignore[arg-type]
        return torch.from_numpy(np.stack(features)).float(), sal

    def _read_one(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        c, k = divmod(index, self.chunk)
        meta_path = self._path(c, ".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"feature cache {self.folder}: chunk {c} (image {index}) is not written yet")
        meta = json.loads(meta_path.read_text())
        return (_slice(self._path(c, ".f16"), meta["features"], k, _FEATURES),
                _slice(self._path(c, ".sal"), meta["saliency"], k, _SALIENCY) if meta["saliency"] else None)


def _slice(path: Path, shapes: list[list[int]], k: int, dtype: type) -> np.ndarray:
    """Array ``k`` of a raw file of consecutive arrays of ``shapes``, copied out of a memory map."""
    sizes = [int(np.prod(s)) for s in shapes]
    offset = sum(sizes[:k]) * np.dtype(dtype).itemsize
    mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(sizes[k],))
    out = np.array(mapped).reshape(shapes[k])
    del mapped  # unmapped: the pages leave this process's resident set
    return out
