"""The frozen-feature sources of ``evaluate.py``: loaders and, where asked, their on-disk caches.

``feature_cache``: ``auto`` (default) keeps a pretrained frozen module's features (``model=frozen_backbone``)
on disk (:class:`usgs.evaluation.feature_store.FeatureStore` under ``paths.features_dir``), so a second
evaluation of the same backbone -- another task, seed or CRF setting -- never re-runs it; ``true`` does so
for any module (a trained checkpoint too), ``false`` keeps the in-RAM cache of ``cache_mb``.
``feature_shard=i/n`` only fills the i-th of n slices of both splits' caches (processes or SLURM jobs at
once); the command without it then computes what is missing and evaluates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Subset

from usgs.data.base import SegmentationDataModule
from usgs.evaluation.feature_store import CHUNK_IMAGES, FeatureStore, module_fingerprint, shard_chunks
from usgs.evaluation.features import FeatureSource
from usgs.run.priors import parse_shard

__all__ = ["feature_sources", "fill_shard", "split_loader"]

# data arguments that change neither the images nor the evaluation transform (left out of the identity)
_LOADER_KEYS = {"batch_size", "eval_batch_size", "num_workers", "pin_memory", "persistent_workers", "prior",
                "prior_root", "prior_splits", "train_transform", "train_sampler", "seed"}


def _split_dataset(datamodule: SegmentationDataModule, split: str, max_images: int | None) -> Any:
    dataset: Any = datamodule.dataset(split, transform=datamodule.eval_transform)
    if max_images is not None:
        dataset = Subset(dataset, range(min(int(max_images), len(dataset))))
    return dataset


def _loader(datamodule: SegmentationDataModule, dataset: Any) -> DataLoader:
    """Deterministic, unshuffled loader with the evaluation transform (no crops)."""
    return DataLoader(dataset, batch_size=datamodule.eval_batch_size, shuffle=False,
                      num_workers=datamodule.num_workers, pin_memory=datamodule.pin_memory)


def split_loader(datamodule: SegmentationDataModule, split: str, max_images: int | None) -> DataLoader:
    """Deterministic, unshuffled loader of ``split`` (its first ``max_images``) with the evaluation transform."""
    return _loader(datamodule, _split_dataset(datamodule, split, max_images))


def _wants_store(cfg: DictConfig, module: nn.Module) -> bool:
    value = cfg.get("feature_cache", "auto")
    if value == "auto":
        return bool(getattr(module, "pretrained", False))
    if isinstance(value, bool):
        return value
    raise ValueError(f"feature_cache={value!r}: expected auto, true or false")


def _identity(cfg: DictConfig, data_cfg: DictConfig, datamodule: SegmentationDataModule, dataset: Any,
              split: str, module_id: dict[str, Any], layer: str, flip: bool) -> dict[str, Any]:
    raw = datamodule.dataset(split, transform=None)
    data = OmegaConf.to_container(data_cfg, resolve=True)
    assert isinstance(data, dict)
    return {"split": split, "images": len(dataset), "files": datamodule.data_identity(raw),
            "data": {k: v for k, v in data.items() if k not in _LOADER_KEYS},
            "module": module_id, "layer": layer, "flip": flip, "dtype": "float16"}


def feature_sources(cfg: DictConfig, data_cfg: DictConfig, datamodule: SegmentationDataModule, module: nn.Module,
                    device: torch.device, layer: str) -> tuple[FeatureSource, FeatureSource]:
    """The (train, evaluated split) feature sources of ``evaluate``; shard slices with ``feature_shard``."""
    flip, progress = bool(cfg.get("flip", False)), bool(cfg.get("progress", True))
    shard = parse_shard(cfg.get("feature_shard"))
    store = _wants_store(cfg, module) or shard is not None
    module_id = module_fingerprint(module) if store else {}
    chunk = int(cfg.get("feature_chunk", CHUNK_IMAGES))
    # dense_outputs reads a module without layer_features at its default features for every layer: one cache
    stored_layer = layer if callable(getattr(module, "layer_features", None)) else "embedding"
    sources = []
    for split, cap in (("train", cfg.get("max_train_images")), (cfg.split, cfg.get("max_eval_images"))):
        dataset = _split_dataset(datamodule, split, cap)
        feature_store, start = None, 0
        if store:
            identity = _identity(cfg, data_cfg, datamodule, dataset, split, module_id, stored_layer, flip)
            feature_store = FeatureStore(Path(cfg.paths.features_dir), identity, len(dataset), chunk)
            if shard is not None:
                part = shard_chunks(len(dataset), shard, chunk)
                dataset, start = Subset(dataset, part), part.start
        sources.append(FeatureSource(module, _loader(datamodule, dataset), device, float(cfg.get("cache_mb", 1024)),
                                     flip, layer, name=f"{split} split", progress=progress, store=feature_store,
                                     start=start))
    return sources[0], sources[1]


def fill_shard(sources: tuple[FeatureSource, ...]) -> dict[str, Any]:
    """One pass over each (sharded) source: its slice of the feature cache is then on disk."""
    images = sum(source.fill() for source in sources)
    return {"images": images, "folders": [str(s.store.folder) for s in sources if s.store is not None]}
