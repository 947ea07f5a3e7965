"""Priors named by ``data.prior`` are computed on the spot when their cache is missing.

``train.py experiment=twins`` on a fresh checkout needs ``make_priors.py prior=kmeans data=shapes``
first; with ``prior_auto=true`` (the default) :func:`ensure_priors` runs exactly that (the command
is logged), with the run's own data config, for each split in ``data.prior_splits``. Extra
``make_priors`` overrides (e.g. ``prior.checkpoint=...``) go in ``prior_overrides``.
``prior_auto=false`` keeps the error that names the command.

Priors made by a trained model (``cam_saliency``: a classifier's Grad-CAM; ``single_stage``;
``saliency_sup``) get that model trained first when no ``prior.checkpoint`` is given: the prior's
``train_command`` (e.g. ``python train.py experiment=classifier``) runs into ``<run dir>/prior_model``
(plus ``prior_model_overrides``), on the run's own data config when it trains on the same dataset
class, and its checkpoint is passed on. So ``python train.py experiment=weak_deeplab`` is the whole
classifier -> pseudo labels -> DeepLab chain in one command, with no checkpoint path copied by hand.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from usgs.data.prior_store import find_prior_dir
from usgs.run.priors import make_priors

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, inside a running Hydra app or outside one."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


# ``train(cfg)`` of usgs.run.train, handed in by its caller: train imports this module, so this
# module never imports train (no import circle).
TrainFn = Callable[[DictConfig], object]


def ensure_priors(cfg: DictConfig, train_model: TrainFn | None = None, score: bool = True) -> list[Path]:
    """Make sure the cache of ``cfg.data.prior`` exists for every prior split; returns the folders.

    ``train_model`` trains the model a prior is made by (``cam_saliency``, ``single_stage``,
    ``saliency_sup`` without ``prior.checkpoint``); train.py passes its own ``train``.
    ``score=False`` (a label-free run): a prior computed here is not scored against the split's masks.
    """
    prior = cfg.data.get("prior")
    if not prior:
        return []
    data_node = OmegaConf.merge(cfg.data, {"prior": None})
    dataset = instantiate(data_node).name
    folders = []
    for split in cfg.data.get("prior_splits", ["train"]):
        try:
            folders.append(find_prior_dir(cfg.paths.priors_dir, dataset, split, prior))
            continue
        except FileNotFoundError as err:
            # a named configuration (kmeans-<hash>) cannot be recomputed from the defaults
            if not cfg.get("prior_auto", True) or "-" in str(prior):
                raise
            overrides = [f"prior={prior}", f"split={split}", *cfg.get("prior_overrides", [])]
            log.info("%s", err)
            log.info("prior_auto=true: computing it now with this run's data config: "
                     "python make_priors.py %s data=%s", " ".join(overrides), dataset)
        folders.append(_make(cfg, data_node, overrides, split, train_model, score))
    return folders


def _make(cfg: DictConfig, data_node: DictConfig, overrides: list[str], split: str,
          train_model: TrainFn | None, score: bool = True) -> Path:
    pcfg = _compose("make_priors", overrides)
    with open_dict(pcfg):
        pcfg.score = score
        pcfg.data = data_node
        pcfg.paths = OmegaConf.merge(pcfg.paths, {
            "priors_dir": str(cfg.paths.priors_dir),
            "output_dir": str(Path(cfg.paths.output_dir) / "priors" / split),
        })
        if "checkpoint" in pcfg.prior and not pcfg.prior.checkpoint:
            own_data = bool(pcfg.prior.get("reads_target_labels", False))
            pcfg.prior.checkpoint = str(_prior_model(cfg, data_node, str(pcfg.prior.train_command),
                                                      train_model, own_data))
    saliency = pcfg.prior.get("saliency")
    if saliency not in (None, "dataset"):  # a prior read by this one (cam_saliency's saliency_unsup) first
        ensure_priors(OmegaConf.merge(cfg, {"data": {"prior": saliency, "prior_splits": [split]},
                                            "prior_overrides": []}), train_model, score)
    report = make_priors(pcfg)
    return Path(cfg.paths.priors_dir) / report["data"] / split / report["folder"]


def _prior_model(cfg: DictConfig, data_node: DictConfig, train_command: str,
                 train_model: TrainFn | None, own_data: bool = False) -> Path:
    """Checkpoint of the model a prior needs, trained now by its ``train_command`` (once per run).

    It trains on the run's own data config when it trains on the same dataset class, and always when
    ``own_data`` (a prior that learns the run's labels, ``reads_target_labels``: same images and class
    count as the run, whatever dataset its experiment names). ``trainer.fast_dev_run`` writes no
    checkpoint, so its one-batch budget is run as one epoch of one batch per split instead."""
    run_dir = Path(cfg.paths.output_dir) / "prior_model"
    if (ckpt := _checkpoint(run_dir)) is not None:
        return ckpt
    args = shlex.split(train_command)
    overrides = [*args[args.index("train.py") + 1:], *cfg.get("prior_model_overrides", [])]
    log.info("the prior needs a trained model: %s %s -> %s", train_command,
             " ".join(cfg.get("prior_model_overrides", [])), run_dir)
    if train_model is None:
        raise ValueError(f"prior {cfg.data.prior!r} needs a trained model ({train_command}): pass "
                         "prior.checkpoint=..., or call ensure_priors with train_model=usgs.run.train.train")
    tcfg = _compose("train", overrides)
    with open_dict(tcfg):
        if own_data or tcfg.data.get("_target_") == data_node.get("_target_"):  # same images and classes
            tcfg.data = data_node
        if tcfg.trainer.get("fast_dev_run"):
            tcfg.trainer.fast_dev_run = False
            tcfg.trainer.max_epochs = 1
            for split in ("train", "val", "test"):
                tcfg.trainer[f"limit_{split}_batches"] = 1
        tcfg.paths = OmegaConf.merge(tcfg.paths, {"output_dir": str(run_dir),
                                                  "priors_dir": str(cfg.paths.priors_dir)})
        tcfg.test = False
    train_model(tcfg)
    if (ckpt := _checkpoint(run_dir)) is None:
        raise FileNotFoundError(f"{train_command} wrote no checkpoint into {run_dir}/checkpoints "
                                "(fast_dev_run saves none: use trainer.limit_train_batches instead)")
    return ckpt


def _checkpoint(run_dir: Path) -> Path | None:
    for name in ("best.ckpt", "last.ckpt"):
        if (path := run_dir / "checkpoints" / name).is_file():
            return path
    return None
