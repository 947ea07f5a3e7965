"""``evaluate(cfg)``: run one evaluation task on a trained (or randomly initialised) module.

``python evaluate.py task=<linear_probe|kmeans|retrieval> ckpt_path=<run>/checkpoints/last.ckpt``
writes ``metrics.json`` (flat), ``metrics.md`` (tables, per-class IoU), ``overlays/*.png`` and the
resolved config into the run directory. With ``ckpt_path`` the network (and, unless
``data_from_checkpoint=false``, the dataset) come from the config stored in the checkpoint; without
it ``model`` is built from this config with its initial weights (the random-init baseline).

``control=saliency_only|prior_only`` scores the method's *input* instead of the network, under the same
task and split (:mod:`usgs.evaluation.controls`): the saliency it was given (its ``model.saliency_key``:
the dataset's ``saliency`` or the cached ``data.prior``), or the prior it is trained on. A prior cache
missing for the split is computed first (``prior_auto``, as in ``train.py``).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from usgs.data.base import SegmentationDataModule
from usgs.evaluation.controls import InputFeatures, prior_only, saliency_only
from usgs.evaluation.report import TaskResult, markdown_table, save_overlays
from usgs.priors.crf import MASKCONTRAST_CRF, dense_crf
from usgs.run.checkpoints import load_checkpoint
from usgs.run.features import feature_sources, fill_shard, split_loader
from usgs.run.outputs import atomic_write_text, write_metrics
from usgs.run.prior_auto import ensure_priors
from usgs.run.start import record_run, start_run

log = logging.getLogger(__name__)


def device_from_name(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run ``cfg.task`` on ``cfg.split``; returns the flat metrics written to metrics.json."""
    run_dir, config, sha = start_run(cfg, record=False)
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
    record_run(run_dir, config, sha)  # after the checkpoint and model are accepted
    control = cfg.get("control")
    if control:
        run_model = run_cfg.model if cfg.get("ckpt_path") else cfg.model
        return _control(cfg, str(control), data_cfg, run_model, run_dir)
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

    source = "none (pretrained backbone)" if getattr(module, "pretrained", False) else "none (random init)"
    return _write(cfg, run_dir, result, datamodule,
                  f"checkpoint: {cfg.get('ckpt_path') or source}; CRF: {bool(cfg.get('crf'))}; flip: {flip}")


def _write(cfg: DictConfig, run_dir: Path, result: TaskResult, datamodule: SegmentationDataModule,
           source: str) -> dict[str, float]:
    metrics = result.flat()
    write_metrics(run_dir, metrics)
    table = markdown_table([result])
    header = f"# {result.task} on {datamodule.name} ({cfg.split})\n\n{source}\n\n"
    atomic_write_text(Path(run_dir) / "metrics.md", header + table)
    overlays = save_overlays([result], Path(run_dir) / "overlays", datamodule.palette, datamodule.num_classes)
    print(header + table)
    print(f"[usgs] metrics: {Path(run_dir) / 'metrics.json'}; overlays: {[str(p) for p in overlays]}")
    return metrics


CONTROLS = ("saliency_only", "prior_only")


def _control(cfg: DictConfig, control: str, data_cfg: DictConfig, model_cfg: DictConfig,
             run_dir: Path) -> dict[str, float]:
    """``control=...``: the method's input alone, scored by ``cfg.task``'s protocol on ``cfg.split``."""
    if control not in CONTROLS:
        raise ValueError(f"control={control!r}: expected one of {list(CONTROLS)} (or null: the network)")
    task = instantiate(cfg.task, _convert_="all")
    key = "prior" if control == "prior_only" else str(model_cfg.get("saliency_key", "saliency"))
    if key == "prior" and not data_cfg.get("prior"):
        raise ValueError(f"control={control} reads data.prior, which the run does not set "
                         f"(model.saliency_key={model_cfg.get('saliency_key')!r})")
    splits = ["train", cfg.split] if task.name == "linear_probe" else [cfg.split]
    data_cfg = OmegaConf.merge(data_cfg, {"prior_splits": sorted(set(splits))} if key == "prior" else {"prior": None})
    if key == "prior":  # a missing cache is computed first (prior_auto), where the run's data looks for it
        priors_dir = data_cfg.get("prior_root") or cfg.paths.priors_dir
        run = cfg.copy()
        with open_dict(run):  # the run's own data (from its checkpoint), not this command's default
            run.data = data_cfg
            run.paths.priors_dir = str(priors_dir)
        ensure_priors(run)
    datamodule: SegmentationDataModule = instantiate(data_cfg, _convert_="all")
    max_images = cfg.get("max_eval_images")
    names, num_classes = list(datamodule.class_names), datamodule.num_classes
    matching = getattr(task, "matching", "hungarian_iou")
    evaluation = split_loader(datamodule, cfg.split, max_images)
    if control == "prior_only":
        report = Path(str(datamodule.dataset(cfg.split).prior_dir)) / "report.json"
        num_labels = int(json.loads(report.read_text()).get("k", 256)) if report.is_file() else 256
        result = prior_only(evaluation, num_classes, num_labels, task.name, matching, names)
    elif task.name == "linear_probe":  # a probe on [saliency, colour] instead of the network's features
        train = InputFeatures(split_loader(datamodule, "train", cfg.get("max_train_images")), key, "train split")
        result = task.run(train, InputFeatures(evaluation, key, f"{cfg.split} split"), num_classes, names)
    else:
        result = saliency_only(evaluation, key, num_classes, task.name, matching, names)
    source = (f"control: {control} (the input {key!r} of the method alone, no network)"
              + ("; oracle saliency (the ground-truth foreground)" if data_cfg.get("saliency") == "oracle" else ""))
    return _write(cfg, run_dir, result, datamodule, source)
