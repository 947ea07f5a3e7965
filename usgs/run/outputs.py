"""What every run leaves in its directory: metrics.json, the resolved config, the git SHA, checkpoints."""

from __future__ import annotations

import io
import json
import math
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from usgs.atomic import atomic_write


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text file through :func:`usgs.atomic.atomic_write` (never half-written, normal permissions)."""
    atomic_write(path, text)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through a temporary file and a rename: a run killed while it
    saves ``last.ckpt`` leaves the previous one whole, so ``resume=true`` still works."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(path, buffer.getvalue())


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Scalars only, as plain floats (tensors converted), sorted by key."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return dict(sorted(out.items()))


def write_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` (flat final metrics; NaN written as null) atomically; returns its path."""
    clean = {k: (None if math.isnan(v) else v) for k, v in flat_metrics(metrics).items()}
    path = Path(run_dir) / "metrics.json"
    atomic_write_text(path, json.dumps(clean, indent=2) + "\n")
    return path


def git_sha(repo_dir: str | Path | None = None) -> str:
    """HEAD's SHA of the checkout (``+dirty`` with uncommitted changes), or ``unknown`` outside git."""
    cwd = Path(repo_dir or Path(__file__).resolve().parents[2])
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")
