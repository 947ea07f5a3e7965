"""Start-up checks of the config values every run reads: a wrong type or range stops the run before any
work, with the key, the value and what is allowed (not a TypeError from deep inside Lightning)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from usgs.errors import ConfigError

Check = Callable[[Any], bool]
_ABSENT = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int, optional: bool = False) -> Check:
    return lambda v: (optional and v is None) or (_is_int(v) and v >= low)


def positive_number(v: Any) -> bool:
    return _is_number(v) and v > 0


def batches(v: Any) -> bool:
    """Lightning's limit_*_batches: a count (int >= 0) or a fraction (float in [0, 1])."""
    return (_is_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


BATCHES = "an integer >= 0 (a number of batches) or a float in [0, 1] (a fraction)"
# key -> (check, what is allowed); keys absent from a config are not checked.
RULES: dict[str, tuple[Check, str]] = {
    "seed": (integer(0, optional=True), "an integer >= 0 or null"),
    "trainer.max_epochs": (integer(-1, optional=True),
                           "an integer >= -1 (-1 = no limit, with trainer.max_steps set) or null"),
    "trainer.min_epochs": (integer(0, optional=True), "an integer >= 0 or null"),
    "trainer.max_steps": (integer(-1), "an integer >= -1 (-1 = no limit)"),
    "trainer.limit_train_batches": (batches, BATCHES),
    "trainer.limit_val_batches": (batches, BATCHES),
    "trainer.limit_test_batches": (batches, BATCHES),
    "trainer.check_val_every_n_epoch": (integer(1, optional=True), "an integer >= 1 or null"),
    "trainer.log_every_n_steps": (integer(1), "an integer >= 1"),
    "trainer.accumulate_grad_batches": (integer(1), "an integer >= 1"),
    "trainer.num_sanity_val_steps": (integer(-1), "an integer >= -1 (-1 = all batches)"),
    "data.batch_size": (integer(1), "an integer >= 1"),
    "data.eval_batch_size": (integer(1, optional=True), "an integer >= 1 or null (= batch_size)"),
    "data.num_workers": (integer(0), "an integer >= 0"),
    "model.num_classes": (integer(1), "an integer >= 1"),
    "model.optimizer.lr": (positive_number, "a number > 0"),
}


def _unbounded_training(cfg: DictConfig) -> list[str]:
    """``max_epochs=-1`` without ``max_steps``: the methods' schedules (poly learning rate, EMA momentum)
    are spread over the run's total steps (``estimated_stepping_batches``), which is then infinite."""
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    if epochs == -1 and steps == -1:
        return ["  trainer.max_epochs=-1: no limit needs trainer.max_steps=<N> (the learning-rate and "
                "momentum schedules are spread over the run's total steps); or set trainer.max_epochs=<N>"]
    return []


def check_config(cfg: DictConfig, rules: dict[str, tuple[Check, str]] = RULES) -> None:
    """Raise :class:`ConfigError` listing every ``key=value`` of ``cfg`` that breaks ``rules``."""
    problems = []
    for key, (check, allowed) in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not check(value):
            problems.append(f"  {key}={value!r}: expected {allowed}")
    problems += _unbounded_training(cfg)
    if problems:
        raise ConfigError("Invalid config value(s):\n" + "\n".join(problems))
