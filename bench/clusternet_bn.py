"""Diagnostic: a ClusterNet run's val mIoU with the BatchNorms around the spectral layer in eval mode
(running statistics, the normal evaluation) and with batch statistics instead; ``--all-bn``: every
BatchNorm of the network (backbone too), e.g. for a pretrained backbone whose slow running statistics
(EfficientNet-Lite: momentum 0.01) lag weights that a high lr moved.

    .venv/bin/python bench/clusternet_bn.py logs/clusternet_stanford_results/clusternet_stanford/seed0
    .venv/bin/python bench/clusternet_bn.py logs/budget/clusternet/ClusterNet/b1_s0 --all-bn
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch import nn  # noqa: E402

from usgs.metrics import SegmentationMetric  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "run_dir", type=Path, help="a train.py run directory (config.yaml, checkpoints/best.ckpt)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--all-bn", action="store_true", help="every BatchNorm, not only the spectral layer's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = OmegaConf.load(args.run_dir / "config.yaml")
    cfg.data.num_workers, cfg.data.persistent_workers = 0, False
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("validate")
    model = instantiate(cfg.model, _convert_="all")
    ckpt_path = args.run_dir / "checkpoints" / "best.ckpt"
    if not ckpt_path.is_file():  # label-free runs keep last.ckpt only
        ckpt_path = ckpt_path.with_name("last.ckpt")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    if getattr(model.net, "cluster", None) is None and not args.all_bn:
        raise SystemExit(f"{args.run_dir}: model has no spectral layer (plain PSPNet); --all-bn reads every BN")
    scope = model.net if args.all_bn else model.net.cluster
    for batch_stats in (False, True):
        model.eval()
        for module in scope.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train(batch_stats)
        metric = SegmentationMetric(int(cfg.data.num_classes))
        with torch.no_grad():
            for batch in datamodule.val_dataloader():
                metric.update(model.predict(batch["image"]), batch["mask"])
        scores = metric.compute()
        name = "batch statistics" if batch_stats else "running statistics"
        print(
            f"{name}: val mIoU {100 * float(scores['miou']):.2f}, pixel acc {100 * float(scores['pixel_accuracy']):.2f}"
        )


if __name__ == "__main__":
    main()
