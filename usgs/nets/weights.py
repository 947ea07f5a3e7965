"""Load a local backbone weight file, fully or with a reason: the one loader of every backbone.

``path`` may also be a registered name (``efficientnet_lite0``, ``dino_vits16``, ... :mod:`usgs.nets.zoo`),
resolved to its verified file, or ``random``: an explicit random initialisation (nothing is loaded).

A file is either a bare state dict or a training checkpoint that nests one: Lightning and MoCo
(``state_dict``), DINO (``teacher`` / ``student``), DeiT-style (``model``). Inside, the backbone's
keys may sit under a prefix: MoCo ``module.encoder_q.``, DINO ``module.backbone.`` (student, DDP) or
``backbone.`` (teacher), Lightning ``net.backbone.``. The loader picks the prefix under which most
keys match the backbone, keeps only the keys under it, and then demands an exact match: a missing
or unexpected key (or a shape mismatch) is an error that lists them, unless ``strict=False``, which
loads what matches and warns with the counts. Keys of a classification head the backbone does not
have (``fc.``, ``classifier.``, ``head.``) are dropped by name, never silently by count.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from usgs.nets.zoo import RANDOM, resolve

log = logging.getLogger(__name__)

# Nested state dicts, in the order they are tried. DINO's evaluation code loads the teacher by default.
CHECKPOINT_KEYS: tuple[str, ...] = ("state_dict", "teacher", "model", "student")

# Where training code puts a backbone; ties are broken by this order (so MoCo's query encoder wins
# over its key encoder, and a twin's ``net.`` over its ``teacher_net.``).
PREFIXES: tuple[str, ...] = (
    "", "module.encoder_q.", "encoder_q.", "module.backbone.", "backbone.", "net.backbone.",
    "model.backbone.", "module.", "model.", "net.", "teacher_net.backbone.", "module.encoder_k.",
)

# Classifier heads of pretraining that backbones deliberately lack (torchvision fc / classifier,
# MoCo's MLP fc, DINO's head, EfficientNet's _fc).
HEAD_PREFIXES: tuple[str, ...] = ("fc.", "classifier.", "head.", "_fc.")


@dataclass(frozen=True)
class LoadReport:
    """What a load did: tensors loaded, the prefix stripped, and what did not match."""

    loaded: int
    prefix: str
    missing: list[str]
    unexpected: list[str]
    shape_mismatch: list[str]


class WeightsMismatchError(ValueError):
    """A weight file whose keys do not match the backbone exactly (``strict=True``)."""


def read_state_dict(path: str | Path, checkpoint_key: str | None = None) -> dict[str, Tensor]:
    """The flat ``name -> tensor`` mapping of a file, unwrapping one training-checkpoint level.

    ``checkpoint_key`` forces the nested entry (e.g. ``"student"`` for a DINO checkpoint). ``path`` may be
    a registered name (:func:`usgs.nets.zoo.resolve`), not ``random``.
    """
    resolved = resolve(path)
    if resolved is None:
        raise ValueError(f"weights {RANDOM!r} is a random initialisation, not a file to read")
    path = resolved
    if not path.is_file():
        raise FileNotFoundError(f"Weight file not found: {path} (expected a local .pth/.ckpt file or a registered "
                                "name, `python -m usgs.nets.zoo list`; nothing is downloaded at run time)")
    # DINO checkpoints pickle their argparse Namespace; allow exactly that, nothing else.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # never unpickle arbitrary objects from a weight file
        raise ValueError(f"{path}: holds objects other than tensors and plain containers, refused by "
                         f"torch.load(weights_only=True): {str(err).splitlines()[0]}") from err
    if not isinstance(blob, dict):
        raise ValueError(f"{path}: expected a state dict (mapping of names to tensors), got {type(blob).__name__}")
    if checkpoint_key is not None:
        if not isinstance(blob.get(checkpoint_key), dict):
            nested = [k for k, v in blob.items() if isinstance(v, dict)]
            raise KeyError(f"{path}: no state dict under {checkpoint_key!r}; nested dicts: {nested}")
        blob = blob[checkpoint_key]
    elif not any(isinstance(v, Tensor) for v in blob.values()):
        key = next((k for k in CHECKPOINT_KEYS if isinstance(blob.get(k), dict)), None)
        if key is None:
            raise ValueError(f"{path}: holds no tensors and none of {list(CHECKPOINT_KEYS)}; top-level keys: "
                             f"{list(blob)[:10]}")
        blob = blob[key]
    return {k: v for k, v in blob.items() if isinstance(v, Tensor)}


def _best_prefix(keys: Sequence[str], own: set[str], prefixes: Sequence[str]) -> tuple[str, int]:
    scores = [(sum(k.startswith(p) and k[len(p):] in own for k in keys), -i, p) for i, p in enumerate(prefixes)]
    count, _, prefix = max(scores)
    return prefix, count


def load_weights(module: nn.Module, path: str | Path, strict: bool = True, checkpoint_key: str | None = None,
                 prefix: str | None = None, head_prefixes: Sequence[str] = HEAD_PREFIXES) -> LoadReport:
    """Load the backbone weights in ``path`` into ``module``.

    Args:
        module: the backbone (its own ``state_dict`` keys are the expected ones).
        path: a local file (bare state dict or training checkpoint).
        strict: ``True``: any missing, unexpected or wrongly shaped key raises
            :class:`WeightsMismatchError` listing them. ``False``: load what matches, warn with counts.
        checkpoint_key: nested entry to read (default: the first of :data:`CHECKPOINT_KEYS` present).
        prefix: the key prefix to strip (default: the one of :data:`PREFIXES` matching most keys).
        head_prefixes: after stripping, keys starting with these are a pretraining head, dropped.
    """
    if str(path) == RANDOM:  # explicit random initialisation (e.g. the frozen-features baseline's control)
        log.info("%s: random initialisation (weights=%s)", type(module).__name__, RANDOM)
        return LoadReport(0, "", [], [], [])
    state = read_state_dict(path, checkpoint_key)
    own = module.state_dict()
    if prefix is None:
        prefix, count = _best_prefix(list(state), set(own), PREFIXES)
        if count == 0:
            raise WeightsMismatchError(
                f"{path}: no key matches {type(module).__name__} under any known prefix {list(PREFIXES)} "
                f"(first keys in file: {list(state)[:5]}; expected e.g. {list(own)[:5]})")
    stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    stripped = {k: v for k, v in stripped.items() if k in own or not k.startswith(tuple(head_prefixes))}
    unexpected = sorted(set(stripped) - set(own))
    missing = sorted(set(own) - set(stripped))
    shape_mismatch = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                            for k, v in stripped.items() if k in own and own[k].shape != v.shape)
    usable = {k: v for k, v in stripped.items() if k in own and own[k].shape == v.shape}
    if missing or unexpected or shape_mismatch:
        message = (f"{path} (prefix {prefix!r}) does not match {type(module).__name__}: "
                   f"{len(missing)} missing {missing[:20]}, {len(unexpected)} unexpected {unexpected[:20]}, "
                   f"{len(shape_mismatch)} with another shape {shape_mismatch[:10]}")
        if strict:
            raise WeightsMismatchError(message + " (set strict: false to load the matching part)")
        log.warning("%s; loading the %d matching tensors", message, len(usable))
    module.load_state_dict(usable, strict=False)
    log.info("Loaded %d tensors from %s (prefix %r)", len(usable), path, prefix)
    return LoadReport(len(usable), prefix, missing, unexpected, shape_mismatch)
