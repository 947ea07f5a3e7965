"""prior=feature_kmeans: k-means of frozen backbone features, through the colour prior's two stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from omegaconf.errors import MissingMandatoryValue
from torch import Tensor, nn

from usgs.nets.vit import vit
from usgs.priors.feature_kmeans import FeatureKMeansPrior


class _HalvesBackbone(nn.Module):
    """A stand-in backbone whose stride-4 features separate the left and right image halves."""

    out_key = "features"

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        b, _, h, w = x.shape
        features = torch.zeros(b, 2, h // 4, w // 4)
        features[:, 0, :, : w // 8] = 1.0
        features[:, 1, :, w // 8:] = 1.0
        return {"features": features}


@pytest.mark.parametrize("stages", [1, 2])
def test_clusters_follow_the_backbone_features_not_colour(stages: int) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 32, 3), dtype=np.uint8) for _ in range(3)]  # colour is noise
    prior = FeatureKMeansPrior(_HalvesBackbone(), k=2, local_k=2, stages=stages, samples_per_image=256,
                               restarts=2, seed=0)
    states = prior.local(images, [0, 1, 2])
    prior.fit(states)
    for image, state in zip(images, states, strict=True):
        labels = prior.finalize_raw(image, state)
        left, right = labels[:, :12], labels[:, 20:]  # away from the bilinear seam
        assert len(np.unique(left)) == 1 and len(np.unique(right)) == 1 and left[0, 0] != right[0, 0]


def test_make_priors_with_a_vit_weight_file(tmp_path: Path, make_cfg) -> None:
    from usgs.run.priors import make_priors

    weights = tmp_path / "dino_vits16.pth"
    torch.save(vit("vit_small_patch16").state_dict(), weights)
    cfg = make_cfg(["prior=feature_kmeans", "data=shapes", "progress=false", "prior.k=4", "prior.local_k=3",
                    "prior.global_iters=10", "prior.restarts=1"], config_name="make_priors")
    with pytest.raises(MissingMandatoryValue, match="weights"):
        make_priors(cfg)
    with open_dict(cfg):
        cfg.prior.backbone.weights = str(weights)
        cfg.paths.priors_dir = str(tmp_path / "priors")
        cfg.data.num_train = 6
    report = make_priors(cfg)
    assert report["prior"] == "feature_kmeans" and report["images"] == 6 and report["k"] == 4
    folder = next((tmp_path / "priors").glob("*/train/feature_kmeans-*"))
    assert json.loads((folder / "manifest.json").read_text())["counts"]["images"] == 6
