"""``make_priors(cfg)``: compute, cache and score one prior for one dataset split (``make_priors.py``).

The only priors module that reads Hydra configs: it turns ``cfg.prior`` into plain arguments.
``cfg.prior`` keys that are not constructor arguments of the prior class:

- ``name``: the cache folder prefix and the value of ``data.prior`` that reads it back;
- ``workers``: processes for CPU-bound per-image priors;
- ``morphology``: optional ``_target_`` node (e.g. ``usgs.priors.morphology.Morphology``), passed as
  the prior's ``postprocess``;
- ``checkpoint``: optional ``train.py`` checkpoint whose module is passed as the prior's ``model``.

A ``-m`` sweep ends with one table of every job's ``report.json`` (:class:`usgs.run.sweep.MultirunTable`,
registered in ``conf/make_priors.yaml``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from usgs.data.prior_store import prior_dir_name
from usgs.priors.cache import compute_prior, config_hash
from usgs.priors.report import MissingGroundTruthError, score_prior_dir, write_report
from usgs.run.outputs import git_sha

log = logging.getLogger(__name__)

__all__ = ["make_priors", "prior_identity"]

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
_NOT_ARGS = ("name", "workers", "morphology", "checkpoint", "features_checkpoint", "train_command")


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


def make_priors(cfg: DictConfig) -> dict[str, Any]:
    """Compute (or resume) the prior cache of ``cfg.split`` and write + print its quality report."""
    torch.manual_seed(int(cfg.seed))
    name, workers, prior = _build_prior(cfg)
    datamodule = instantiate(cfg.data, prior=None)
    dataset = datamodule.dataset(cfg.split, transform=None)
    data = datamodule.data_identity(dataset)
    identity = prior_identity(cfg, data["root"])
    out_dir = (
        Path(cfg.paths.priors_dir) / datamodule.name / cfg.split / prior_dir_name(name, config_hash(identity))
    )
    log.info("prior %s for data=%s split=%s -> %s", name, datamodule.name, cfg.split, out_dir)
    manifest = compute_prior(
        prior,
        dataset,
        out_dir,
        identity,
        workers=workers,
        progress=bool(cfg.progress),
        extra={"dataset": datamodule.name, "split": cfg.split, "git_sha": git_sha()},
        data=data,
    )
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
    try:
        report.update(score_prior_dir(out_dir, dataset, prior.kind, datamodule.num_classes, prior.num_labels))
    except MissingGroundTruthError as err:  # a split without ground truth: the prior is still usable
        log.warning("not scored: %s", err)
    for path in {out_dir, Path(cfg.paths.output_dir)}:
        text = write_report(path, report, f"prior {out_dir.name} on {datamodule.name}/{cfg.split}")
    print(text)
    return report
