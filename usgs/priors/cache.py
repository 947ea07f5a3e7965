"""Compute a prior for every image of a dataset split into an atomic, resumable, hashed PNG cache.

Layout (reading side: ``usgs.data.prior_store``)::

    <prior_root>/<dataset>/<split>/<prior>-<config hash>/
        config.json        the prior's config, written first: a folder is never reused for another config
        data.json          data root + fingerprint of the split's files; when the files change, the
                           folder's results are deleted and recomputed (never reused)
        <id>.png           uint8 prior map, 255 = ignore (written atomically: temp file + os.replace)
        .states/<id>.npz   per-image intermediate results of two-stage priors (deleted when finished)
        .fit.npz           what the prior's fit() learned (a resumed run skips fit)
        .shards/<i>-of-<n>.json   a finished shard's counts and seconds (deleted when finished)
        manifest.json      written LAST: config, counts, timings (+ ``extra``: git SHA, dataset ...)

A killed run (even by SIGKILL, in any stage) is resumed by running the same command again: finished
images and a finished fit are skipped, and the PNGs equal those of an uninterrupted run. Worker
processes die with the process that started them (parent-death signal).

Sharding (``shard=(i, n)``): the per-image stage of the i-th of n contiguous slices of the split's
batches (the id list in its fixed order, cut at batch boundaries so that every batch is the same,
with the same seed, as in an unsharded run) is computed and left on disk (states, or PNGs for
one-stage priors; PNGs too when the fit is already known), and nothing else. Shards may run at once in
several processes or machines (every write is atomic); the unsharded call then computes whatever
is still missing, runs the global stage once, and writes the same files as a run without shards.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from tqdm.auto import tqdm

from usgs.atomic import atomic_write
from usgs.data.prior_store import MANIFEST
from usgs.priors.base import MaskPrior
from usgs.priors.cache_folder import (
    CONFIG_FILE,
    DATA_FILE,
    ConfigMismatchError,
    check_config,
    check_data,
    clean,
    config_hash,
    load_npz,
    save_npz,
    write_png,
)
from usgs.priors.processes import map_in_processes

__all__ = ["config_hash", "compute_prior", "load_image", "atomic_write", "ConfigMismatchError"]

log = logging.getLogger(__name__)


class RawDataset(Protocol):
    """The raw-access part of ``usgs.data.base.SegmentationDataset`` that priors need."""

    ids: list[str]

    def __len__(self) -> int: ...
    def load(self, index: int) -> dict[str, np.ndarray]: ...
    def describe(self, index: int) -> str: ...


def shard_batches(num_batches: int, shard: tuple[int, int]) -> range:
    """Batch positions of shard ``i`` of ``n``: the i-th of n contiguous, near-equal slices."""
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
    return range(i * num_batches // n, (i + 1) * num_batches // n)


def load_image(dataset: RawDataset, index: int) -> np.ndarray:
    """Raw uint8 [H,W,3] image ``index``, or a RuntimeError naming the image and the reason."""
    try:
        image = dataset.load(index)["image"]
    except Exception as err:  # any reader failure becomes one clear message
        raise RuntimeError(
            f"cannot read image {index} ({dataset.describe(index)}): {type(err).__name__}: {err}"
        ) from err
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise RuntimeError(
            f"image {index} ({dataset.describe(index)}) must be uint8 [H,W,3], got {image.dtype} {image.shape}"
        )
    return image


def _local_batch(prior: MaskPrior, dataset: RawDataset, indices: Sequence[int], out_dir: Path) -> float:
    """Run ``local`` on one batch; store states (two-stage priors) or final PNGs. Returns compute seconds."""
    images = [load_image(dataset, i) for i in indices]
    start = time.perf_counter()
    states = prior.local(images, indices)
    seconds = time.perf_counter() - start
    for i, image, state in zip(indices, images, states, strict=True):
        if prior.needs_fit:
            save_npz(out_dir / ".states" / f"{dataset.ids[i]}.npz", state)
        else:
            start = time.perf_counter()
            mask = prior.finalize(image, state)
            seconds += time.perf_counter() - start
            write_png(out_dir / f"{dataset.ids[i]}.png", mask)
    return seconds


def _local_job(indices: list[int], prior: MaskPrior, dataset: RawDataset, out_dir: Path) -> float:
    return _local_batch(prior, dataset, indices, out_dir)


def compute_prior(
    prior: MaskPrior,
    dataset: RawDataset,
    out_dir: str | Path,
    config: Mapping[str, Any],
    workers: int = 1,
    progress: bool = True,
    extra: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    fit_from: Path | None = None,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Fill ``out_dir`` with the prior of every image of ``dataset``; return the manifest dict.

    Resumes an unfinished folder (skips images whose PNG / state exists) and returns the existing
    manifest of a finished one. ``data`` (data root + fingerprint of the split's files) is stored in
    ``data.json`` and the manifest; a folder computed from other files is recomputed. ``workers`` > 1
    spreads CPU-bound priors (``prior.parallel``) over processes. ``extra`` entries (dataset, split
    ...) are stored in the manifest. ``fit_from``: another cache's fit file (e.g. the train split's
    global clusters) used instead of fitting on this split. ``shard=(i, n)``: only the per-image
    stage of the i-th of n slices (see the module docstring); returns that shard's counts.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_config(out_dir, config)
    check_data(out_dir, data)
    if fit_from is not None and not (out_dir / ".fit.npz").is_file():
        atomic_write(out_dir / ".fit.npz", fit_from.read_bytes())  # loaded below as a resumed fit
    if (out_dir / MANIFEST).is_file():
        clean(out_dir)  # a run killed after writing the manifest
        manifest = json.loads((out_dir / MANIFEST).read_text())
        log.info("cache complete: %d of %d images done, nothing to compute (%s)", len(dataset), len(dataset), out_dir)
        return manifest
    wall = time.perf_counter()
    n, ids = len(dataset), dataset.ids
    fit_file = out_dir / ".fit.npz"
    fitted = prior.needs_fit and fit_file.is_file()

    def missing(i: int) -> bool:
        state = (out_dir / ".states" / f"{ids[i]}.npz").is_file()
        if prior.needs_fit and not fitted:
            return not state
        return not (out_dir / f"{ids[i]}.png").is_file() and not (prior.needs_fit and state)

    batches = [range(s, min(n, s + prior.batch_size)) for s in range(0, n, prior.batch_size)]
    if shard is not None:
        batches = [batches[b] for b in shard_batches(len(batches), shard)]
    todo = [list(b) for b in batches if any(missing(i) for i in b)]
    computed = sum(len(b) for b in todo)
    done = sum(not missing(i) for i in range(n))
    if done:
        stage = "per-image states" if prior.needs_fit and not fitted else "prior maps"
        log.info("resuming: %d of %d images done (%s in %s)", done, n, stage, out_dir)
    bar = tqdm(total=len(todo), desc=f"{out_dir.name}: per-image", unit="batch", disable=not progress)
    local_seconds = 0.0
    if prior.parallel and workers > 1 and len(todo) > 1:
        jobs: Iterator[float] = map_in_processes(_local_job, todo, workers, prior, dataset, out_dir)
    else:
        jobs = (_local_batch(prior, dataset, b, out_dir) for b in todo)
    for seconds in jobs:
        local_seconds += seconds
        bar.update(1)
    bar.close()
    scope = [i for b in batches for i in b]  # this call's images: the shard's, or all
    fit_seconds = finalize_seconds = 0.0
    if shard is not None and not fitted:  # the global stage is the unsharded call's
        return _finish_shard(out_dir, shard, scope, computed, local_seconds)
    if prior.needs_fit:
        if fitted:
            prior.load_fit_state(load_npz(fit_file))
        else:
            # only the keys the fit reads (the k-means priors' centres, not their label maps): the
            # memory of the global stage grows with what it needs, not with the images' pixels
            states = [load_npz(out_dir / ".states" / f"{i}.npz", prior.fit_keys) for i in ids]
            start = time.perf_counter()
            prior.fit(states, lambda i: load_image(dataset, i))
            fit_seconds = time.perf_counter() - start
            del states
            save_npz(fit_file, prior.fit_state())
        for i in tqdm(
            [i for i in scope if not (out_dir / f"{ids[i]}.png").is_file()],
            desc=f"{out_dir.name}: finalize",
            disable=not progress,
        ):
            image = load_image(dataset, i)
            state = load_npz(out_dir / ".states" / f"{ids[i]}.npz")
            start = time.perf_counter()
            mask = prior.finalize(image, state)
            finalize_seconds += time.perf_counter() - start
            write_png(out_dir / f"{ids[i]}.png", mask)
    if shard is not None:
        return _finish_shard(out_dir, shard, scope, computed, local_seconds + finalize_seconds)
    shards = [json.loads(p.read_text()) for p in sorted((out_dir / ".shards").glob("*.json"))]
    shard_images = sum(s["computed"] for s in shards)
    local_seconds += sum(s["seconds"] for s in shards)
    histogram = np.zeros(256, dtype=np.int64)
    empty = []
    for name in ids:
        stored = cv2.imread(str(out_dir / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        if stored is None:
            raise RuntimeError(f"prior map {out_dir / name}.png is missing or unreadable")
        histogram += np.bincount(stored.ravel(), minlength=256)
        if (stored == 255).all():
            empty.append(name)
    manifest = {
        "config": json.loads((out_dir / CONFIG_FILE).read_text()),
        "folder": out_dir.name,
        "prior": type(prior).__qualname__,
        "kind": prior.kind,
        "num_labels": prior.num_labels,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": {
            "images": n,
            "computed_this_run": computed,
            "no_proposal": len(empty),
            "label_pixels": {str(v): int(c) for v, c in enumerate(histogram) if c},
        },
        "no_proposal_ids": empty,
        "seconds": {
            "local": local_seconds,
            "fit": fit_seconds,
            "finalize": finalize_seconds,
            "wall": time.perf_counter() - wall,
        },
        "ms_per_image": 1000.0 * (local_seconds + fit_seconds + finalize_seconds) / max(1, computed + shard_images),
        **dict(extra or {}),
        **({"data": json.loads((out_dir / DATA_FILE).read_text())} if data is not None else {}),
    }
    atomic_write(out_dir / MANIFEST, json.dumps(manifest, indent=2).encode())
    clean(out_dir)
    return manifest


def _finish_shard(out_dir: Path, shard: tuple[int, int], scope: list[int], computed: int,
                  seconds: float) -> dict[str, Any]:
    """Record a finished shard (its compute time enters the manifest's timing) and return its counts."""
    record = {"shard": f"{shard[0]}/{shard[1]}", "images": len(scope), "computed": computed, "seconds": seconds}
    atomic_write(out_dir / ".shards" / f"{shard[0]}-of-{shard[1]}.json", json.dumps(record).encode())
    return record
