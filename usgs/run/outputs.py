"""What every run leaves in its directory: metrics.json, the resolved config and the git SHA."""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
