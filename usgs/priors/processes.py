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

__all__ = ["map_in_processes", "WorkerPool"]


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


class WorkerPool:
    """A reusable pool of ``workers`` spawned processes that die with their parent, for many small maps.

    ``map(function, items, timeout)`` returns ``[function(item) ...]`` in order. An item that takes
    longer than ``timeout`` seconds ends the pool (its workers are killed, not waited for) and raises a
    TimeoutError naming it, so a stuck worker (STEGO issue #16: the CRF pool hangs) cannot hang the run.
    ``workers=0`` runs in this process. Use as a context manager, or call ``close()``.
    """

    def __init__(self, workers: int) -> None:
        self.workers = int(workers)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(self, function: Callable[[Any], Any], items: Sequence[Any], timeout: float | None = None) -> list[Any]:
        if self.workers <= 0:
            return [function(item) for item in items]
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, context, initializer=_die_with_parent,
                                             initargs=(os.getpid(),))
        futures = [self._pool.submit(function, item) for item in items]
        results = []
        try:
            for future in futures:
                results.append(future.result(timeout=timeout))
        except TimeoutError as err:
            self.close()
            raise TimeoutError(f"worker pool: item {len(results)} of {len(items)} took over {timeout} s "
                               f"({getattr(function, '__name__', function)!r}); workers killed") from err
        except BaseException:
            self.close()
            raise
        return results

    def close(self) -> None:
        """Cancel pending work and kill the workers (they are not waited for)."""
        if self._pool is None:
            return
        processes = list(getattr(self._pool, "_processes", {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.kill()
        self._pool = None
