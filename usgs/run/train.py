"""``train(cfg)``: fit a method, test its best checkpoint, write metrics.json + config + git SHA."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from usgs.callbacks import StoreConfig
from usgs.run.outputs import atomic_write_text, flat_metrics, git_sha, write_metrics
from usgs.run.prior_auto import ensure_priors

log = logging.getLogger(__name__)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config, interpolations resolved, without Hydra's own node."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container  # type: ignore[return-value]


def config_text(config: dict[str, Any], sha: str) -> str:
    """The resolved config as Markdown for TensorBoard's text tab (indented: a code block)."""
    body = OmegaConf.to_yaml(OmegaConf.create(config))
    return f"git {sha}\n\n" + "\n".join("    " + line for line in body.splitlines())


def start_run(cfg: DictConfig) -> tuple[Path, dict[str, Any], str]:
    """Seed everything, create the run directory, write ``config.yaml`` and ``git_sha.txt``."""
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    run_dir = Path(cfg.paths.output_dir)
    config = resolved_config(cfg)
    sha = git_sha(cfg.paths.get("root_dir"))
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    atomic_write_text(run_dir / "git_sha.txt", sha + "\n")
    log.info("Run directory: %s (git %s)", run_dir, sha)
    return run_dir, config, sha


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(node, _convert_="all") for node in group.values() if node and "_target_" in node]


def train(cfg: DictConfig) -> float | None:
    """Fit ``cfg.model`` on ``cfg.data``, then test the best checkpoint; returns ``cfg.optimized_metric``."""
    run_dir, config, sha = start_run(cfg)
    ensure_priors(cfg)  # a missing data.prior cache is computed first (unless prior_auto=false)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    if len(datamodule.class_names) == model.num_classes:  # not when clusters are scored as classes
        model.class_names = list(datamodule.class_names)
    callbacks = [*_instantiate_group(cfg.get("callbacks")), StoreConfig(config)]
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams({"git_sha": sha, **config})
        if isinstance(logger, TensorBoardLogger):  # the whole resolved config, readable in TEXT
            logger.experiment.add_text("config", config_text(config, sha), 0)

    resume = None
    if cfg.get("resume"):
        last = run_dir / "checkpoints" / "last.ckpt"
        resume = str(last) if last.is_file() else None
        log.info("Resuming from %s", resume) if resume else log.info("No %s yet: starting fresh", last)
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    metrics = dict(trainer.callback_metrics)
    if cfg.get("test"):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=False)
        metrics.update(trainer.callback_metrics)
    metrics_path = write_metrics(run_dir, metrics)
    final = flat_metrics(metrics)
    # fractions in metrics.json, percent when printed
    summary = ", ".join(f"{k}={100 * final[k]:.1f}%" for k in ("val/miou_best", "test/miou") if k in final)
    log.info("Finished: %s. Metrics: %s; logs and checkpoints: %s", summary, metrics_path, run_dir)
    print(f"[usgs] {summary}\n[usgs] metrics: {metrics_path}\n[usgs] run directory: {run_dir}")
    name = cfg.get("optimized_metric")
    return final.get(name) if name else None
