"""``train(cfg)``: fit a method, test its chosen checkpoint, write metrics.json + config + git SHA.

The checkpoint tested is ``best.ckpt`` (by ``val/miou``) for methods that learn from labels and
``last.ckpt`` for label-free ones (``uses_labels`` of the method); the test split is used once, there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from usgs.callbacks import StoreConfig
from usgs.errors import ConfigError
from usgs.nets.weights import SAFE_GLOBALS
from usgs.run.checkpoints import checkpoint_to_test, select_callbacks
from usgs.run.label_free import check_label_free
from usgs.run.outputs import AtomicCheckpointIO, flat_metrics, write_metrics
from usgs.run.prior_auto import ensure_priors
from usgs.run.resume import last_checkpoint
from usgs.run.start import check_free_space, config_text, record_run, start_run

log = logging.getLogger(__name__)


def _instantiate_group(group: DictConfig | None, name: str) -> dict[str, Any]:
    """``{key: object}`` of a callbacks/logger group; a null entry is switched off, a node without
    ``_target_`` is an error naming its key."""
    if not group:
        return {}
    objects = {}
    for key, node in group.items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            given = OmegaConf.to_container(node) if isinstance(node, DictConfig) else node
            raise ConfigError(f"{name}.{key} has no _target_ (got {given!r}); give it one, or set "
                             f"{name}.{key}=null to switch it off")
        objects[str(key)] = instantiate(node, _convert_="all")
    return objects


def train(cfg: DictConfig) -> float | None:
    """Fit ``cfg.model`` on ``cfg.data``, then test the chosen checkpoint; returns ``cfg.optimized_metric``."""
    # resume=true: the checkpoint is checked (weights_only, a full checkpoint) before anything is written
    resume = last_checkpoint(Path(cfg.paths.output_dir)) if cfg.get("resume") else None
    run_dir, config, sha = start_run(cfg, record=False)
    model = instantiate(cfg.model, _convert_="all")
    # Refusals first (a label-free method given a mask-reading sampler, prior or callback), before any work.
    check_label_free(cfg, type(model).__name__, model.uses_labels)
    # A full checkpoint holds the weights and up to two optimizer moments per weight (Adam; SGD one).
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    check_free_space(run_dir, 3 * weights, "a checkpoint of this model (weights + optimizer state)")
    record = StoreConfig(config)
    callbacks = [*select_callbacks(model, _instantiate_group(cfg.get("callbacks"), "callbacks")), record]
    loggers = list(_instantiate_group(cfg.get("logger"), "logger").values())
    record_run(run_dir, config, sha)  # only now: a refused config leaves an earlier run's records alone
    # A missing data.prior cache is computed first (unless prior_auto=false); for a label-free method
    # without scoring it against the training masks.
    ensure_priors(cfg, train_model=train, score=model.uses_labels)
    datamodule = instantiate(cfg.data, _convert_="all")
    training_data = getattr(model, "training_data", None)
    if callable(training_data):  # a method that trains on its own view of the data (STEGO's crop pairs)
        datamodule = training_data(datamodule)
    if len(datamodule.class_names) == model.num_classes:  # not when clusters are scored as classes
        model.class_names = list(datamodule.class_names)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      plugins=[AtomicCheckpointIO()])
    for logger in loggers:
        logger.log_hyperparams({"git_sha": sha, **config})
        if isinstance(logger, TensorBoardLogger):  # the whole resolved config, readable in TEXT
            logger.experiment.add_text("config", config_text(config, sha), 0)

    # weights_only=True: Lightning's own loads run no code from a checkpoint either
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        if cfg.get("train", True):
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        # A run resumed after its last epoch trains no further: its metrics come from the checkpoint.
        metrics = {**record.restored_metrics, **trainer.callback_metrics}
        if cfg.get("test"):
            tested = checkpoint_to_test(trainer, model)
            trainer.test(model, datamodule=datamodule, ckpt_path=tested, weights_only=True)
            metrics.update(trainer.callback_metrics)
    metrics_path = write_metrics(run_dir, metrics)
    final = flat_metrics(metrics)
    # fractions in metrics.json, percent when printed
    summary = ", ".join(f"{k}={100 * final[k]:.1f}%" for k in ("val/miou_best", "test/miou") if k in final)
    log.info("Finished: %s. Metrics: %s; logs and checkpoints: %s", summary, metrics_path, run_dir)
    print(f"[usgs] {summary}\n[usgs] metrics: {metrics_path}\n[usgs] run directory: {run_dir}")
    name = cfg.get("optimized_metric")
    return final.get(name) if name else None
