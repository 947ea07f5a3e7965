"""Checkpoints of ``train.py``: which ones a method keeps and is tested on, and how to rebuild a module
from one (the run config travels inside it)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from usgs.callbacks import BestCheckpoint
from usgs.methods.base import SegmentationModule
from usgs.nets.weights import WeightsFileError, load_file

log = logging.getLogger(__name__)

# What a checkpoint's stored config may build (model and data): classes of these packages, and the
# network factories of usgs.nets (backbones: resnet, vgg16_bn), and a usgs function under
# ``_partial_: true`` (STEGO's ``model.crf``): instantiating it only binds its arguments, and only the
# module's own code calls it. Any other function (os.system, usgs.atomic.atomic_write) would run when
# instantiated, with arguments from the file.
TRUSTED_TARGETS = ("usgs.", "torch.nn.", "torch.optim.")
TRUSTED_FUNCTIONS = ("usgs.nets.",)


def _check_targets(node: Any, path: Path, where: str) -> None:
    """Refuse a stored config whose ``_target_`` anywhere under ``node`` is not a trusted class."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            trusted = isinstance(target, str) and target.startswith(TRUSTED_TARGETS)
            partial_usgs = node.get("_partial_") is True and trusted and target.startswith("usgs.")
            if trusted and not partial_usgs and not target.startswith(TRUSTED_FUNCTIONS):  # imported only under a trusted prefix
                module, _, name = target.rpartition(".")
                try:
                    trusted = isinstance(getattr(importlib.import_module(module), name), type)
                except (ImportError, AttributeError):
                    trusted = False
            if not trusted:
                raise WeightsFileError(
                    f"checkpoint {path}: its config would build {target!r} ({where}._target_), which is not a "
                    f"class of {', '.join(p.rstrip('.') for p in TRUSTED_TARGETS)} (or a usgs.nets factory): refused")
        for key, value in node.items():
            _check_targets(value, path, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_targets(value, path, f"{where}[{i}]")


def load_checkpoint(ckpt_path: str | Path) -> tuple[DictConfig, SegmentationModule]:
    """Return ``(run config, module with the checkpoint's weights)``; clear errors for foreign files."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path} (train.py writes <run dir>/checkpoints/last.ckpt, "
                                "and best.ckpt for methods that learn from labels)")
    checkpoint = load_file(path, "checkpoint")  # weights_only=True: a file from elsewhere runs no code
    if not isinstance(checkpoint, dict) or "usgs_config" not in checkpoint:
        keys = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WeightsFileError(f"checkpoint {path} has no 'usgs_config' (found {keys}): it was not written by "
                               "usgs' train.py; backbone weights go to model.net.weights=<file> instead")
    for key in ("model", "data"):  # what evaluate / predict / priors build from the stored config
        _check_targets(checkpoint["usgs_config"].get(key), path, key)
    cfg = OmegaConf.create(checkpoint["usgs_config"])
    model = instantiate(cfg.model, _convert_="all")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsFileError(f"checkpoint {path}: its weights do not fit the {type(model).__name__} its own "
                               f"config describes ({first}): the file is damaged or was edited") from err
    return cfg, model


def select_callbacks(model: SegmentationModule, callbacks: dict[str, Any]) -> list[Any]:
    """The callbacks a method may use. A label-free method (``uses_labels`` False) uses none that act on
    a validation or test metric, which come from ground truth: the default ``best.ckpt``
    (:class:`BestCheckpoint`) is left out (its checkpoint is last.ckpt), any other such callback (early
    stopping, a second checkpoint) is refused with its key."""
    kept = []
    for name, callback in callbacks.items():
        monitor = getattr(callback, "monitor", None)
        if not model.uses_labels and isinstance(monitor, str) and monitor.startswith(("val/", "test/")):
            if not isinstance(callback, BestCheckpoint):
                raise ValueError(f"callbacks.{name} acts on {monitor}, computed from ground-truth masks, but "
                                 f"{type(model).__name__} learns without labels: remove it (callbacks.{name}=null)")
            log.info("%s learns without labels: callbacks.%s (best by %s) is not used; its checkpoint "
                     "is last.ckpt", type(model).__name__, name, monitor)
            continue
        kept.append(callback)
    return kept


def checkpoint_to_test(trainer: pl.Trainer, model: SegmentationModule) -> str | None:
    """``best.ckpt`` (chosen on val) for methods that learn from labels, else the last checkpoint;
    None (the weights in memory) when no checkpoint callback wrote one."""
    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]  # type: ignore[attr-defined]
    best = [c.best_model_path for c in checkpoints if c.monitor and c.best_model_path]
    last = [c.last_model_path or (c.best_model_path if c.monitor is None else "") for c in checkpoints]
    chosen = (best if model.uses_labels else []) + [path for path in last if path]
    if not chosen:
        log.warning("No checkpoint was written: testing the weights in memory")
        return None
    log.info("Testing %s", chosen[0])
    return chosen[0]
