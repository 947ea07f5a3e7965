"""The start of every run: check the config, seed, create the run directory, record config and SHA.

Shared by ``train`` and ``evaluate`` (and anything else that owns a run directory).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from usgs.errors import UserError
from usgs.run.config_checks import check_config
from usgs.run.lock import lock_run_dir
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


def check_writable(folder: str | Path, key: str) -> Path:
    """Create ``folder`` and write a probe file into it, or a :class:`UserError` naming ``key``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{key}={folder} is not a writable folder ({err.strerror or err}): choose another "
                        f"{key}") from err
    return folder


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Warn when ``folder``'s disk has less than ``needed`` bytes free (a save then fails naming the file)."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        log.warning("only %.0f MB free on the disk of %s; %s needs about %.0f MB: a save will fail there, "
                    "naming the file (free space, or set hydra.run.dir elsewhere)", free / 2**20, folder, what,
                    needed / 2**20)


def start_run(cfg: DictConfig, record: bool = True) -> tuple[Path, dict[str, Any], str]:
    """Check the config values, lock the run directory (one run per directory), seed everything, write
    ``config.yaml`` and ``git_sha.txt`` (``record=False``: the caller does, with :func:`record_run`, after
    building its objects). With ``resume=true`` the config must match the stored one but for
    ``trainer.max_epochs``.
    """
    check_config(cfg)
    run_dir = check_writable(cfg.paths.output_dir, "hydra.run.dir")
    lock_run_dir(run_dir)
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    config = resolved_config(cfg)
    if cfg.get("resume"):
        check_resumed_config(run_dir, config)
    elif (run_dir / "checkpoints" / "last.ckpt").is_file():
        log.warning("%s holds the checkpoints of an earlier run: this new run overwrites them (resume=true "
                    "continues that run instead)", run_dir)
    sha = git_sha(cfg.paths.get("root_dir"))
    if record:
        record_run(run_dir, config, sha)
    return run_dir, config, sha


def record_run(run_dir: Path, config: dict[str, Any], sha: str) -> None:
    """Write ``config.yaml`` and ``git_sha.txt``: called once the run's objects are built, so a config
    a constructor refuses leaves an earlier run's records in the directory as they were."""
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    atomic_write_text(run_dir / "git_sha.txt", sha + "\n")
    log.info("Run directory: %s (git %s)", run_dir, sha)
