"""Start-up refusals of a label-free run (README "Protocol").

A method with ``uses_labels`` False never reads a mask in training or model choice, and no input it
gets is computed from masks. Before any work, :func:`check_label_free` stops such a run, naming the key,
when the config gives it a component that reads the training split's labels:

* ``data.train_sampler``: a sampler decides which samples are drawn; the suite's one
  (``usgs.data.sampling.rare_class_sampler``) weighs them by the classes in their masks, and a label-free
  run draws in the loader's seeded order, so every sampler is refused;
* ``data.prior``: a prior made from the run's own labels (``reads_target_labels: true`` in its
  ``conf/prior`` file: ``cam_saliency``, ``single_stage``, whose models learn the image-level labels).

Callbacks acting on a val/test metric are refused by :func:`usgs.run.checkpoints.select_callbacks`;
a prior computed for the run (``prior_auto``) is not scored against the training masks.
``data.saliency=oracle`` (the ground-truth foreground as saliency) is allowed only as a named oracle:
it is logged as such, and its numbers must say "oracle saliency".
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PRIOR_CONF = Path(__file__).resolve().parents[2] / "conf" / "prior"


def prior_reads_target_labels(prior: str) -> bool:
    """Whether ``conf/prior/<prior>.yaml`` (``<name>-<hash>`` names its base) learns from the run's labels."""
    path = PRIOR_CONF / f"{prior.split('-')[0]}.yaml"
    return path.is_file() and bool(OmegaConf.load(path).get("reads_target_labels", False))


def check_label_free(cfg: DictConfig, method: str, uses_labels: bool) -> None:
    """Raise ``ValueError`` naming every key of ``cfg`` that would give the label-free ``method`` labels."""
    if uses_labels:
        return
    problems = []
    sampler = cfg.data.get("train_sampler")
    if sampler:
        target = sampler.get("_target_", sampler) if isinstance(sampler, DictConfig) else sampler
        problems.append(f"  data.train_sampler={target}: samplers choose samples (rare_class_sampler by the "
                        "classes in their masks); a label-free run draws in the seeded loader order: set it to null")
    prior = cfg.data.get("prior")
    if prior and prior_reads_target_labels(str(prior)):
        problems.append(f"  data.prior={prior}: made by a model that learns this dataset's labels "
                        "(reads_target_labels in conf/prior); use a label-free prior (kmeans, saliency_unsup, ...)")
    if problems:
        raise ValueError(f"{method} learns without labels, but the config gives it components that read "
                         "ground-truth masks:\n" + "\n".join(problems))
    if cfg.data.get("saliency") == "oracle":
        log.warning("data.saliency=oracle: %s is given the ground-truth foreground as saliency; report its "
                    "numbers as 'oracle saliency'", method)
