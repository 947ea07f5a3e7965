"""The files of one prior cache folder (``usgs.priors.cache`` fills it): the config and data records that
decide whether a folder may be reused, per-image PNG masks and npz states, and the clean-up of a finished
folder. Every write is atomic (temporary file, then rename)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from usgs.atomic import atomic_write
from usgs.data.prior_store import MANIFEST
from usgs.priors.base import State

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
log = logging.getLogger(__name__)


class ConfigMismatchError(RuntimeError):
    """A cache folder exists but was created by a different prior configuration."""


def config_hash(config: Mapping[str, Any], length: int = 10) -> str:
    """Stable short hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def write_png(path: Path, mask: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", mask)
    if not ok:
        raise RuntimeError(f"could not encode prior PNG {path}")
    atomic_write(path, buf.tobytes())


def save_npz(path: Path, arrays: State) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types the first kwarg as allow_pickle
    atomic_write(path, buf.getvalue())


def load_npz(path: Path, keys: Sequence[str] | None = None) -> State:
    """The arrays of an .npz file (only ``keys`` when given: npz members are read one by one)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files if keys is None or k in keys}


def check_config(out_dir: Path, config: Mapping[str, Any]) -> None:
    path = out_dir / CONFIG_FILE
    wanted = json.loads(json.dumps(config, sort_keys=True, default=str))
    if path.is_file():
        found = json.loads(path.read_text())
        if found != wanted:
            raise ConfigMismatchError(
                f"cache folder {out_dir} was created by a different prior config; refusing to reuse it.\n"
                f"  in the folder: {json.dumps(found, sort_keys=True)}\n  requested:     {json.dumps(wanted, sort_keys=True)}"
            )
    else:
        atomic_write(path, json.dumps(wanted, indent=2, sort_keys=True).encode())


def check_data(out_dir: Path, data: Mapping[str, Any] | None) -> None:
    """Delete the results of a folder computed from other files than ``data`` describes, then record it."""
    if data is None:
        return
    path = out_dir / DATA_FILE
    wanted = json.loads(json.dumps(data, sort_keys=True, default=str))
    found = json.loads(path.read_text()) if path.is_file() else None
    if found == wanted:
        return
    results = [out_dir / MANIFEST, out_dir / ".fit.npz", *out_dir.rglob("*.png")]
    if any(p.is_file() for p in results) or (out_dir / ".states").exists():
        log.warning("%s was computed from other files (%s, now %s): recomputing it", out_dir, found, wanted)
        (out_dir / MANIFEST).unlink(missing_ok=True)  # first: the folder is unfinished from here on
        shutil.rmtree(out_dir / ".states", ignore_errors=True)
        for result in results[1:]:
            result.unlink(missing_ok=True)
    atomic_write(path, json.dumps(wanted, indent=2, sort_keys=True).encode())


def clean(out_dir: Path) -> None:
    """Remove what a finished folder no longer needs: per-image states, shard records, temp files."""
    shutil.rmtree(out_dir / ".states", ignore_errors=True)
    shutil.rmtree(out_dir / ".shards", ignore_errors=True)
    for tmp in out_dir.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
