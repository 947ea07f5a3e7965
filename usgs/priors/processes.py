"""A process pool whose workers never outlive the process that started them.

joblib's reusable loky executor (used here before) kept two ~570 MB workers alive for minutes after
make_priors.py was killed with SIGKILL; these workers get a parent-death signal instead.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

__all__ = ["map_in_processes"]


def _die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when ``parent`` dies, even by SIGKILL (no orphaned workers)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # from <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)

    def watch() -> None:  # other systems (and a parent that died before prctl): poll
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def map_in_processes(
    function: Callable[..., Any], items: Sequence[Any], workers: int, *args: Any
) -> Iterator[Any]:
    """``function(item, *args)`` for each item in ``workers`` spawned processes, results in order.

    Each worker gets a parent-death signal; the pool is shut down (pending items cancelled) when the
    caller stops iterating, finishes or fails.
    """
    context = multiprocessing.get_context("spawn")  # no fork of a process with OpenMP / torch threads
    pool = ProcessPoolExecutor(workers, context, initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        futures = [pool.submit(function, item, *args) for item in items]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
