"""``evaluate(cfg)``: run one evaluation task on a trained (or randomly initialised) module.

``python evaluate.py task=<linear_probe|kmeans|retrieval> ckpt_path=<run>/checkpoints/last.ckpt``
writes ``metrics.json`` (flat), ``metrics.md`` (tables, per-class IoU), ``overlays/*.png`` and the
resolved config into the run directory. With ``ckpt_path`` the network (and, unless
``data_from_checkpoint=false``, the dataset) come from the config stored in the checkpoint; without
it ``model`` is built from this config with its initial weights (the random-init baseline).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from usgs.data.base import SegmentationDataModule
from usgs.evaluation.report import markdown_table, save_overlays
from usgs.priors.crf import MASKCONTRAST_CRF, dense_crf
from usgs.run.checkpoints import load_checkpoint
from usgs.run.features import feature_sources, fill_shard
from usgs.run.outputs import atomic_write_text, write_metrics
from usgs.run.start import start_run

log = logging.getLogger(__name__)


def device_from_name(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run ``cfg.task`` on ``cfg.split``; returns the flat metrics written to metrics.json."""
    run_dir, _, _ = start_run(cfg)
    if cfg.get("ckpt_path"):
        run_cfg, module = load_checkpoint(cfg.ckpt_path)
        data_cfg = run_cfg.data if cfg.get("data_from_checkpoint", True) else cfg.data
        log.info("Loaded %s from %s", type(module).__name__, cfg.ckpt_path)
    else:
        module = instantiate(cfg.model, _convert_="all")
        data_cfg = cfg.data
        if not getattr(module, "pretrained", False):  # model=frozen_backbone loads its own weight file
            log.warning("No ckpt_path: evaluating the freshly initialised %s (random-init baseline)",
                        type(module).__name__)
    datamodule: SegmentationDataModule = instantiate(data_cfg, _convert_="all")
    datamodule.prior = None  # evaluation reads the network's outputs, never a cached prior
    device = device_from_name(str(cfg.get("device", "auto")))
    module.to(device)
    task = instantiate(cfg.task, _convert_="all")
    flip = bool(cfg.get("flip", False))
    layer = str(getattr(task, "layer", "embedding"))  # the features the task reads
    train, evaluation = feature_sources(cfg, data_cfg, datamodule, module, device, layer)
    if cfg.get("feature_shard") is not None:  # a slice of the feature caches only; no evaluation
        done = fill_shard((train, evaluation))
        print(f"[usgs] feature_shard={cfg.feature_shard}: {done['images']} images in {done['folders']}; "
              "evaluate with the same command without feature_shard=")
        return {}
    log.info("%s on %s/%s (progress bars: one per pass over a split)", cfg.task._target_.rsplit(".", 1)[-1],
             datamodule.name, cfg.split)
    crf_params: dict[str, Any] = dict(MASKCONTRAST_CRF)
    refine = functools.partial(dense_crf, **crf_params) if cfg.get("crf") else None
    result = task.run(train, evaluation, datamodule.num_classes, list(datamodule.class_names), refine)

    metrics = result.flat()
    write_metrics(run_dir, metrics)
    table = markdown_table([result])
    source = "none (pretrained backbone)" if getattr(module, "pretrained", False) else "none (random init)"
    header = (f"# {result.task} on {datamodule.name} ({cfg.split})\n\ncheckpoint: "
              f"{cfg.get('ckpt_path') or source}; CRF: {bool(cfg.get('crf'))}; flip: {flip}\n\n")
    atomic_write_text(Path(run_dir) / "metrics.md", header + table)
    overlays = save_overlays([result], Path(run_dir) / "overlays", datamodule.palette, datamodule.num_classes)
    print(header + table)
    print(f"[usgs] metrics: {Path(run_dir) / 'metrics.json'}; overlays: {[str(p) for p in overlays]}")
    return metrics
