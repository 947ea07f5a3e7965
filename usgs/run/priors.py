"""``make_priors(cfg)``: compute, cache and score one prior for one dataset split (``make_priors.py``).

The only priors module that reads Hydra configs: it turns ``cfg.prior`` into plain arguments.
``cfg.prior`` keys that are not constructor arguments of the prior class:

- ``name``: the cache folder prefix and the value of ``data.prior`` that reads it back;
- ``workers``: processes for CPU-bound per-image priors;
- ``morphology``: optional ``_target_`` node (e.g. ``usgs.priors.morphology.Morphology``), passed as
  the prior's ``postprocess``;
- ``checkpoint``: optional ``train.py`` checkpoint whose module is passed as the prior's ``model``;
- ``fit_split``: for priors with a dataset-level fit (the k-means priors' global clusters), the split
  the fit is learnt on; every other split reuses that fit (its ``.fit.npz``), so all splits share one
  set of global cluster ids, as the seed's ``scripts/kNNRelabeling.py`` (fit on train, applied to
  train and test). ``null`` fits every split on its own images.

``shard=i/n`` computes only the per-image stage of the i-th of n slices of the split
(:func:`usgs.priors.cache.compute_prior`), e.g. ``-m shard=0/4,1/4,2/4,3/4`` as processes
(``hydra/launcher=joblib``) or SLURM jobs (``hydra/launcher=submitit_slurm``); the same command
without ``shard`` then computes what is missing and the global stage, scores and reports. A split
that reuses another split's fit (``fit_split``) shards that split first and waits for its global stage.

A ``-m`` sweep ends with one table of every job's ``report.json`` (:class:`usgs.run.sweep.MultirunTable`,
registered in ``conf/make_priors.yaml``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from usgs.data.prior_store import prior_dir_name
from usgs.priors.cache import compute_prior, config_hash
from usgs.priors.report import MissingGroundTruthError, prior_panel, score_prior_dir, write_report
from usgs.run.outputs import atomic_write_text, git_sha
from usgs.visualize import write_png

log = logging.getLogger(__name__)

__all__ = ["make_priors", "parse_shard", "prior_identity"]

# DataModule arguments that do not change the images or labels of a split (left out of the hash).
_LOADER_KEYS = {
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "pin_memory",
    "persistent_workers",
    "prior",
    "prior_root",
    "prior_splits",
    "train_transform",
    "eval_transform",
    "root",
    "seed",
}
_NOT_ARGS = (
    "name",
    "workers",
    "morphology",
    "checkpoint",
    "features_checkpoint",
    "train_command",
    "fit_split",
    "reads_target_labels",
)
FIT_FILE = ".fit.npz"  # what compute_prior stores of the prior's fit (kept after the cache is finished)


def prior_identity(cfg: DictConfig, data_root: str | None = None) -> dict[str, Any]:
    """What the cache hash covers: the prior config (minus ``workers``), the seed, split and data identity.

    ``data_root`` (the resolved root of the data) keeps caches of two datasets apart even when their
    files have the same names; the files' fingerprint is checked by the cache itself (``data.json``).
    """
    prior = OmegaConf.to_container(cfg.prior, resolve=True)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(prior, dict) and isinstance(data, dict)
    prior.pop("workers", None)
    return {
        "prior": prior,
        "seed": cfg.seed,
        "split": cfg.split,
        "data": {k: v for k, v in data.items() if k not in _LOADER_KEYS},
        "data_root": data_root,
    }


def _build_prior(cfg: DictConfig) -> tuple[str, int, Any]:
    node = OmegaConf.to_container(cfg.prior, resolve=True)
    assert isinstance(node, dict)
    name, workers = node.get("name"), int(node.get("workers", 1))
    if "_target_" not in node:
        options = sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "prior").glob("*.yaml"))
        raise ValueError(f"prior={name} computes nothing; choose a prior to compute, one of: {options}")
    kwargs: dict[str, Any] = {"seed": int(cfg.seed)}
    if node.get("morphology"):
        kwargs["postprocess"] = instantiate(node["morphology"])
    if node.get("checkpoint"):
        from usgs.run.checkpoints import load_checkpoint

        kwargs["model"] = load_checkpoint(node["checkpoint"])[1]
    elif node.get("features_checkpoint"):  # optional network features for the k-means prior
        from usgs.run.checkpoints import load_checkpoint

        kwargs["model"] = load_checkpoint(node["features_checkpoint"])[1]
    elif "checkpoint" in node:
        raise ValueError(
            f"prior={name} needs a trained model: add prior.checkpoint=<path to best.ckpt> "
            f"(train one with: {node.get('train_command', 'python train.py experiment=<its experiment>')})"
        )
    for key in _NOT_ARGS:
        node.pop(key, None)
    return str(name), workers, instantiate(node, **kwargs)


def parse_shard(value: Any) -> tuple[int, int] | None:
    """``"i/n"`` (the ``shard`` key) -> (i, n); None or "" -> None; anything else: a clear error."""
    if value is None or value == "":
        return None
    try:
        i, n = (int(part) for part in str(value).split("/"))
    except ValueError:
        raise ValueError(f"shard={value!r}: expected i/n, e.g. shard=0/4 (the first of 4 slices)") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard={value}: expected i/n with 0 <= i < n")
    return i, n


def _fitted_elsewhere(cfg: DictConfig, needs_fit: bool) -> Path | dict[str, Any] | None:
    """The finished cache folder whose fit this split reuses (computed first if needed), or None;
    under ``shard``, the fit split's shard report while its global stage is still to run."""
    fit_split = cfg.prior.get("fit_split")
    if not needs_fit or not fit_split or fit_split == cfg.split:
        return None
    fit_cfg = cfg.copy()
    with open_dict(fit_cfg):
        fit_cfg.split = fit_split
    report = make_priors(fit_cfg)
    if "shard" in report:
        return report
    fit_dir = Path(cfg.paths.priors_dir) / report["data"] / fit_split / report["folder"]
    if not (fit_dir / FIT_FILE).is_file():
        raise FileNotFoundError(
            f"{fit_dir} has no {FIT_FILE} (made by an older version?): delete that folder and rerun "
            f"python make_priors.py split={fit_split} with the same overrides"
        )
    return fit_dir


def make_priors(cfg: DictConfig) -> dict[str, Any]:
    """Compute (or resume) the prior cache of ``cfg.split`` and write + print its quality report.

    With ``prior.fit_split`` set to another split, that split's cache is made first and its fit
    (the global clusters) is reused here; the fit's folder is part of this cache's identity.
    """
    # The benchmark's thread counts (bench/priors.py --threads 1 under OMP_NUM_THREADS=1): on a
    # shared CPU more torch / OpenCV threads than cores made the fast prior ~30x slower. Restored
    # afterwards: train.py computes missing priors in its own process (prior_auto) and then trains.
    with _threads(int(cfg.get("threads", 1))):
        return _make_priors(cfg)


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(count)
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def _make_priors(cfg: DictConfig) -> dict[str, Any]:
    torch.manual_seed(int(cfg.seed))
    name, workers, prior = _build_prior(cfg)
    shard = parse_shard(cfg.get("shard"))
    fit_dir = _fitted_elsewhere(cfg, prior.needs_fit)
    if isinstance(fit_dir, dict):
        log.info("split %s waits for the global stage of split %s: run the command without shard=",
                 cfg.split, cfg.prior.fit_split)
        return fit_dir
    datamodule = instantiate(cfg.data, prior=None)
    dataset = datamodule.dataset(cfg.split, transform=None)
    data = datamodule.data_identity(dataset)
    identity = prior_identity(cfg, data["root"])
    if fit_dir is not None:
        identity["fit_from"] = f"{fit_dir.parent.name}/{fit_dir.name}"
    out_dir = (
        Path(cfg.paths.priors_dir) / datamodule.name / cfg.split / prior_dir_name(name, config_hash(identity))
    )
    log.info("prior %s for data=%s split=%s -> %s", name, datamodule.name, cfg.split, out_dir)
    if fit_dir is not None:
        log.info("global fit from %s", fit_dir)
    manifest = compute_prior(
        prior,
        dataset,
        out_dir,
        identity,
        workers=workers,
        progress=bool(cfg.progress),
        extra={"dataset": datamodule.name, "split": cfg.split, "git_sha": git_sha()},
        data=data,
        fit_from=fit_dir / FIT_FILE if fit_dir is not None else None,
        shard=shard,
    )
    if "shard" in manifest:  # a shard's part is done; the unsharded command finishes the cache
        done = {"prior": name, "data": datamodule.name, "split": cfg.split, "folder": out_dir.name, **manifest}
        atomic_write_text(Path(cfg.paths.output_dir) / "report.json", json.dumps(done, indent=2))
        print(f"[usgs] shard {manifest['shard']} of {out_dir}: {manifest['computed']} of its "
              f"{manifest['images']} images computed; finish with the same command without shard=")
        return done
    report: dict[str, Any] = {
        "prior": name,
        "data": datamodule.name,
        "split": cfg.split,
        "folder": out_dir.name,
        "k": prior.num_labels,
        "images": manifest["counts"]["images"],
        "no_proposal": manifest["counts"]["no_proposal"],
        "ms_per_image": manifest["ms_per_image"],
    }
    scored = bool(cfg.get("score", True))  # false: a label-free run's prior, never compared with its masks
    if scored:
        report.update(_scores(out_dir, report, dataset, prior, datamodule.num_classes, bool(cfg.progress)))
    for path in {out_dir, Path(cfg.paths.output_dir)}:
        text = write_report(path, report, f"prior {out_dir.name} on {datamodule.name}/{cfg.split}")
    if scored:  # the panel shows the ground truth too
        panel = prior_panel(out_dir, dataset, prior.kind, datamodule.num_classes, prior.num_labels,
                            datamodule.palette, datamodule.class_names, int(cfg.get("panel_images", 6)))
        for path in {out_dir, Path(cfg.paths.output_dir)}:
            write_png(path / "panel.png", panel)
    print(text)
    print(f"[usgs] report and panel (image | prior | ground truth): {out_dir}/report.md, {out_dir}/panel.png")
    return report


def _scores(out_dir: Path, report: dict[str, Any], dataset: Any, prior: Any, num_classes: int,
            progress: bool) -> dict[str, Any]:
    """The quality scores of a finished cache; read back from its ``report.json`` when that was
    written for the same cache (same folder, images and timing: the manifest's), else computed."""
    previous = out_dir / "report.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        if all(old.get(k) == report[k] for k in ("folder", "images", "ms_per_image", "k")):
            log.info("scores read from %s (the cache is unchanged)", previous)
            return {k: v for k, v in old.items() if k not in report}
    try:
        return score_prior_dir(out_dir, dataset, prior.kind, num_classes, prior.num_labels, progress=progress,
                               class_ids=prior.class_ids)
    except MissingGroundTruthError as err:  # a split without ground truth: the prior is still usable
        log.warning("not scored: %s", err)
        return {}
