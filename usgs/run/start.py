"""The start of every run: check the config, seed, create the run directory, record config and SHA.

Shared by ``train`` and ``evaluate`` (and anything else that owns a run directory).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from usgs.run.config_checks import check_config
from usgs.run.outputs import atomic_write_text, git_sha
from usgs.run.resume import check_resumed_config

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
