"""Diagnostic: how degenerate is a ClusterNet run's channel graph on real images?

For the first ``--images`` val images, one at a time (batch 1, as the thesis trained), the layer4
features go through the BatchNorm before the spectral layer in training mode (the statistics the
layer sees in training), then the run's own affinity. Printed per run: mean share of linked
off-diagonal channel pairs, mean number of graph components with more than one channel, mean
number of non-empty clusters (out of ``num_clusters``).

    .venv/bin/python bench/clusternet_graph.py logs/cn_stanford/suite/seed0 logs/cn_stanford/thesis/seed0
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from usgs.nets.spectral import channel_distances  # noqa: E402


def graph_stats(run_dir: Path, images: int) -> dict[str, float]:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.data.num_workers, cfg.data.persistent_workers, cfg.data.eval_batch_size = 0, False, 1
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("validate")
    model = instantiate(cfg.model, _convert_="all")
    ckpt = next(p for p in (run_dir / "checkpoints" / n for n in ("best.ckpt", "last.ckpt")) if p.is_file())
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    model.eval()
    bn, layer = model.net.cluster[0].train(), model.net.cluster[1]
    linked = multi = nonempty = 0.0
    seen = 0
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            feats = bn(model.net.backbone(batch["image"])["layer4"])
            affinity = layer.affinity(channel_distances(feats, rms=layer.rms_distance))[0]
            c = affinity.shape[0]
            linked += float((affinity.sum() - c) / (c * (c - 1)))
            multi += float(((affinity.sum(1) - 1) > 0).sum())
            nonempty += float(layer.assign(feats)[0].unique().numel())
            seen += 1
            if seen == images:
                break
    return {
        "linked_pairs_pct": 100 * linked / seen,
        "linked_channels": multi / seen,
        "nonempty_clusters": nonempty / seen,
        "num_clusters": layer.num_clusters,
        "images": seen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+", help="train.py run directories of ClusterNet runs")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run_dir in args.run_dirs:
        print(run_dir, graph_stats(run_dir, args.images))


if __name__ == "__main__":
    main()
