"""bench/compare.py: every row's commands compose to the real configs, on one backbone for all rows."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config, load_bench

compare = load_bench("compare")


def _args(**kw) -> argparse.Namespace:
    base = {"data": "stanford", "backbone": "efficientnet_lite0", "weights": "efficientnet_lite0",
            "output_stride": 32, "seeds": [0, 1], "extra": []}
    return argparse.Namespace(**{**base, **kw})


def _backbone_of(cfg) -> tuple[str, str]:
    """(name, weights) of the network a composed config builds."""
    if OmegaConf.select(cfg, "model.net.backbone") is not None:
        return cfg.model.net.backbone, cfg.model.net.weights
    return cfg.model.backbone.name, cfg.model.backbone.weights


@pytest.mark.parametrize("row", sorted(compare.KEYS))
def test_every_row_runs_on_the_chosen_backbone(row: str, tmp_path: Path) -> None:
    for command in compare.commands(row, 0, tmp_path / "run", _args()):
        script, overrides = Path(command[1]).stem, command[2:]
        if any(o.startswith("ckpt_path=") for o in overrides):
            continue  # the evaluation of the row's own checkpoint: the backbone is the trained one's
        cfg = compose_config(script, [o for o in overrides if not o.startswith("hydra.")], tmp_path)
        assert _backbone_of(cfg) == ("efficientnet_lite0", "efficientnet_lite0"), (row, command)


def test_summaries_are_seed_mean_and_population_std() -> None:
    runs = [{"unsupervised": 0.2, "linear": 0.5}, {"unsupervised": 0.4, "linear": 0.5}]
    cells = compare.summarise("stego", runs)
    assert cells["unsupervised"] == pytest.approx((0.3, 0.1, 2)) and cells["linear"] == pytest.approx((0.5, 0.0, 2))
    assert "| STEGO (cluster / linear probe) | 2 | 30.0 ± 10.0 | - | 50.0 ± 0.0 | - |" in compare.table({"stego": cells})
