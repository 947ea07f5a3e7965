"""``train(cfg)``: fit a method, test its chosen checkpoint, write metrics.json + config + git SHA.

The checkpoint tested is ``best.ckpt`` (by ``val/miou``) for methods that learn from labels and
``last.ckpt`` for label-free ones (``uses_labels`` of the method); the test split is used once, there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from usgs.callbacks import StoreConfig
from usgs.run.checkpoints import checkpoint_to_test, select_callbacks
from usgs.run.config_checks import check_config
from usgs.run.outputs import AtomicCheckpointIO, atomic_write_text, flat_metrics, git_sha, write_metrics
from usgs.run.prior_auto import ensure_priors
from usgs.run.resume import check_resumed_config, last_checkpoint

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
    """Check the config values, seed everything, create the run directory, write ``config.yaml`` and
    ``git_sha.txt``. With ``resume=true`` the config must match the stored one but for ``trainer.max_epochs``.
    """
    check_config(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    run_dir = Path(cfg.paths.output_dir)
    config = resolved_config(cfg)
    if cfg.get("resume"):
        check_resumed_config(run_dir, config)
    sha = git_sha(cfg.paths.get("root_dir"))
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    atomic_write_text(run_dir / "git_sha.txt", sha + "\n")
    log.info("Run directory: %s (git %s)", run_dir, sha)
    return run_dir, config, sha


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
            raise ValueError(f"{name}.{key} has no _target_ (got {given!r}); give it one, or set "
                             f"{name}.{key}=null to switch it off")
        objects[str(key)] = instantiate(node, _convert_="all")
    return objects


def train(cfg: DictConfig) -> float | None:
    """Fit ``cfg.model`` on ``cfg.data``, then test the chosen checkpoint; returns ``cfg.optimized_metric``."""
    run_dir, config, sha = start_run(cfg)
    ensure_priors(cfg)  # a missing data.prior cache is computed first (unless prior_auto=false)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    training_data = getattr(model, "training_data", None)
    if callable(training_data):  # a method that trains on its own view of the data (STEGO's crop pairs)
        datamodule = training_data(datamodule)
    if len(datamodule.class_names) == model.num_classes:  # not when clusters are scored as classes
        model.class_names = list(datamodule.class_names)
    record = StoreConfig(config)
    callbacks = [*select_callbacks(model, _instantiate_group(cfg.get("callbacks"), "callbacks")), record]
    loggers = list(_instantiate_group(cfg.get("logger"), "logger").values())
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      plugins=[AtomicCheckpointIO()])
    for logger in loggers:
        logger.log_hyperparams({"git_sha": sha, **config})
        if isinstance(logger, TensorBoardLogger):  # the whole resolved config, readable in TEXT
            logger.experiment.add_text("config", config_text(config, sha), 0)

    resume = last_checkpoint(run_dir) if cfg.get("resume") else None
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=False)
    # A run resumed after its last epoch trains no further: its metrics come from the checkpoint.
    metrics = {**record.restored_metrics, **trainer.callback_metrics}
    if cfg.get("test"):
        tested = checkpoint_to_test(trainer, model)
        trainer.test(model, datamodule=datamodule, ckpt_path=tested, weights_only=False)
        metrics.update(trainer.callback_metrics)
    metrics_path = write_metrics(run_dir, metrics)
    final = flat_metrics(metrics)
    # fractions in metrics.json, percent when printed
    summary = ", ".join(f"{k}={100 * final[k]:.1f}%" for k in ("val/miou_best", "test/miou") if k in final)
    log.info("Finished: %s. Metrics: %s; logs and checkpoints: %s", summary, metrics_path, run_dir)
    print(f"[usgs] {summary}\n[usgs] metrics: {metrics_path}\n[usgs] run directory: {run_dir}")
    name = cfg.get("optimized_metric")
    return final.get(name) if name else None
