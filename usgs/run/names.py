"""Run names: the ``or_else`` and ``dirname`` resolvers that conf/hydra/default.yaml uses to name run directories
(and so TensorBoard runs) by experiment, else model, and overrides. Entry points import this module
before ``hydra.main`` composes the config."""

from __future__ import annotations

import hashlib
from typing import Any

from omegaconf import OmegaConf


def or_else(value: Any, default: Any) -> Any:
    """``value`` unless it is unset (None / "None" / "null" / empty), else ``default``."""
    return default if value in (None, "None", "null", "") else value


def dirname(text: Any, max_length: int = 120) -> str:
    """``text`` usable as one folder name: ``/`` -> ``_``; long names cut, with a hash of the whole."""
    name = str(text or "").replace("/", "_")
    if len(name) > max_length:
        name = name[: max_length - 9] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


OmegaConf.register_new_resolver("or_else", or_else, replace=True)
OmegaConf.register_new_resolver("dirname", dirname, replace=True)
