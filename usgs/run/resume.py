"""``resume=true``: continue a run from its ``last.ckpt`` with the config it was started with."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from usgs.errors import ConfigError
from usgs.nets.weights import WeightsFileError, load_file

log = logging.getLogger(__name__)

# What a resumed run may change: how long it trains, and the switch that says it resumes.
MAY_CHANGE = ("trainer.max_epochs", "resume")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (stored, current)}`` for every leaf that differs (``<absent>`` where missing)."""
    old, new = _flatten(stored), _flatten(current)
    return {key: (old.get(key, "<absent>"), new.get(key, "<absent>"))
            for key in sorted(old.keys() | new.keys()) if old.get(key, "<absent>") != new.get(key, "<absent>")}


def check_resumed_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Stop if ``config`` differs from the run's stored ``config.yaml`` other than :data:`MAY_CHANGE`;
    log the changes it may make (the caller then rewrites ``config.yaml``)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    stored = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(stored, dict)
    diff = config_differences(stored, config)
    blocked = {k: v for k, v in diff.items() if k not in MAY_CHANGE}
    if blocked:
        lines = "\n".join(f"  {key}: {old!r} (stored) -> {new!r} (now)" for key, (old, new) in blocked.items())
        raise ConfigError(
            f"resume=true: the config differs from the one the run in {run_dir} was started with "
            f"({path}):\n{lines}\nResume with the stored values (only trainer.max_epochs may change), "
            "or start a new run directory."
        )
    for key, (old, new) in diff.items():
        if key != "resume":
            log.warning("resume=true: %s changes from %r to %r; %s is updated", key, old, new, path)


def last_checkpoint(run_dir: Path) -> str | None:
    """``<run_dir>/checkpoints/last.ckpt`` if it exists (checked: loadable with ``weights_only=True``,
    a full checkpoint); otherwise a warning with the path and None."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        state = load_file(last, "checkpoint to resume", mmap=True)  # mmap: no tensor data is read
        if not isinstance(state, dict) or "optimizer_states" not in state or "loops" not in state:
            raise WeightsFileError(f"checkpoint to resume {last} holds no training state (optimizer, loops): "
                                   "it is not a last.ckpt of usgs' train.py; start a new run directory")
        log.info("resuming from epoch %s, step %s (%s)", state.get("epoch"), state.get("global_step"), last)
        return str(last)
    log.warning("resume=true but %s does not exist (the run ended before its first checkpoint, or "
                "hydra.run.dir is not the old run's directory): starting from scratch", last)
    return None
