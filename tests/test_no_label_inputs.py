"""No built-in dataset gives a method an input computed from its masks by default (issue 23).

A saliency equal to the ground-truth foreground is an oracle: only ``data.saliency=oracle`` gives it,
named so. Every built-in dataset (generated, no files: the ones every user and test runs) is composed
from its real config with its defaults, and its default training batch must hold no saliency equal to
``mask > 0`` or to the dataset's own foreground classes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from tests.conftest import ROOT

BUILT_IN = sorted(p.stem for p in (ROOT / "conf" / "data").glob("*.yaml")
                  if "root: null" in p.read_text())  # generated data: no files


def _batch(make_cfg: Callable[..., DictConfig], name: str, *overrides: str) -> tuple[dict, object]:
    cfg = make_cfg([f"data={name}", "data.num_train=8", "data.batch_size=8", *overrides])
    datamodule = instantiate(cfg.data, _convert_="all")
    return next(iter(datamodule.train_dataloader())), datamodule.dataset("train")


def test_built_in_datasets_are_found() -> None:
    assert {"shapes", "objects"} <= set(BUILT_IN), BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_default_batch_holds_no_saliency_from_the_masks(make_cfg: Callable[..., DictConfig], name: str) -> None:
    batch, dataset = _batch(make_cfg, name)
    mask = batch["mask"]
    foregrounds = [mask > 0, torch.from_numpy(dataset.foreground(mask.numpy()))]  # type: ignore[attr-defined]
    for key in ("saliency", "prior"):
        if key in batch:
            for fg in foregrounds:
                assert not torch.equal(batch[key] == 1, fg), f"data={name}: default {key!r} is the ground truth"


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_oracle_is_only_given_by_name(make_cfg: Callable[..., DictConfig], name: str) -> None:
    """The check above can fail: the named oracle is exactly the ground-truth foreground."""
    batch, dataset = _batch(make_cfg, name, "data.saliency=oracle")
    fg = torch.from_numpy(dataset.foreground(batch["mask"].numpy()))  # type: ignore[attr-defined]
    labelled = batch["mask"] != 255
    assert torch.equal((batch["saliency"] == 1)[labelled], fg[labelled])
    with pytest.raises(InstantiationException, match="data.saliency='gt'"):
        _batch(make_cfg, name, "data.saliency=gt")
