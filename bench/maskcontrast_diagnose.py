"""Which half of MaskContrast a checkpoint has learnt: the saliency, or object embeddings that cluster.

For one split: (1) the IoU of the predicted saliency (logit > 0.5, the k-means protocol's threshold)
against the ground-truth foreground (mask > 0), and (2) the accuracy of k-means over one prototype per
image taken inside the GROUND-TRUTH foreground (so saliency errors do not count), ``k`` = object
classes, Hungarian-matched to each image's object class, with the confusion matrix of the first
k-means seed. Needs a dataset with one object class per image on a background class 0
(``data=objects``). ``--random-init`` scores the same network untrained.

    python bench/maskcontrast_diagnose.py logs/demo/last_run/checkpoints/last.ckpt --split val
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from usgs.nets.kmeans import kmeans  # noqa: E402
from usgs.run.checkpoints import load_checkpoint  # noqa: E402


@torch.no_grad()
def diagnose(ckpt: str, split: str, random_init: bool, seeds: int) -> None:
    cfg, module = load_checkpoint(ckpt)
    if random_init:
        torch.manual_seed(0)
        module = instantiate(cfg.model, _convert_="all")
    module.eval()
    data = instantiate(cfg.data, _convert_="all")
    loader = DataLoader(data.dataset(split, transform=data.eval_transform), batch_size=32)
    inter = union = 0.0
    prototypes, classes = [], []
    for batch in loader:
        features, saliency = module.layer_features(batch["image"], "projection")
        foreground = (batch["mask"] > 0) & (batch["mask"] != 255)
        predicted = saliency > 0.5
        inter += float((predicted & foreground).sum())
        union += float((predicted | foreground).sum())
        weights = foreground.unsqueeze(1).float()
        prototypes.append(F.normalize((features * weights).sum((2, 3)) / weights.sum((2, 3)).clamp_min(1), dim=1))
        classes += [int(m[f].mode().values) for m, f in zip(batch["mask"], foreground)]
    x, y = torch.cat(prototypes), np.array(classes) - 1
    k = int(y.max()) + 1
    accuracies = []
    for seed in range(seeds):
        assignment = kmeans(x, k, generator=torch.Generator().manual_seed(seed)).labels.numpy()
        confusion = np.zeros((k, k), dtype=int)
        np.add.at(confusion, (assignment, y), 1)
        rows, cols = linear_sum_assignment(-confusion)
        accuracies.append(confusion[rows, cols].sum() / len(y))
        if seed == 0:
            first = confusion
    print(f"{ckpt}{' (random init)' if random_init else ''}, {split}: saliency IoU {inter / max(union, 1):.3f}; "
          f"ground-truth-mask prototype k-means accuracy {np.mean(accuracies):.3f} ± {np.std(accuracies):.3f} "
          f"over {seeds} seeds (chance {1 / k:.2f})")
    print("confusion (rows: clusters, columns: classes", data.class_names[1:], "), k-means seed 0:")
    print(first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--split", default="val")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    diagnose(args.ckpt, args.split, args.random_init, args.seeds)


if __name__ == "__main__":
    main()
