"""One run per directory: an OS lock on ``<run dir>/.lock``, held until the process ends.

``flock`` locks die with their process, so a run killed by ``kill -9`` leaves no stale lock: the next
run (``resume=true`` or a fresh one) takes the directory over, and a second run into a directory that
a live process holds stops at start naming the directory and that process's PID. The Hydra callback
:class:`RunDirLock` takes the lock before Hydra writes anything into the directory (its ``.hydra/``
files and log); :func:`usgs.run.start.start_run` takes it too (runs composed without Hydra's app).
``-m`` sweeps give each job its own directory, so each job holds its own lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from usgs.errors import RunDirInUseError
from usgs.run.entry import report

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # run directory -> descriptor of its locked .lock file (kept open)


def _other_rank() -> bool:
    """A DDP process other than rank 0: Lightning's plain ``ddp`` re-runs the script (same directory)
    for each further rank; the rank-0 process holds the lock for all of them."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def lock_run_dir(run_dir: str | Path) -> Path:
    """Hold the lock of ``run_dir`` (created if missing) for the rest of this process; the lock file
    holds our PID. Taking a lock this process already holds is a no-op. Returns the lock file."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    key = run_dir.resolve()
    if key in _held or _other_rank():
        return path
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirInUseError(
            f"run directory {run_dir} is in use by another run (PID {other}, lock {path}): wait for it "
            "to end, or choose another hydra.run.dir (resume=true takes over only from a run that ended)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd
    return path


class RunDirLock(Callback):
    """Hydra callback: lock ``hydra.run.dir`` before Hydra writes into it (single runs; each job of a
    sweep is locked by ``start_run`` in its own directory). Hydra turns a callback's exception into a
    warning, so a refusal is reported (one line, exit status 2) here."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            lock_run_dir(str(config.hydra.run.dir))
        except Exception as err:
            report(err)
            raise
