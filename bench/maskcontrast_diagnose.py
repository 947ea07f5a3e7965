"""Which half of MaskContrast a checkpoint has learnt: the saliency, or object embeddings that cluster.

For one split: (1) the IoU of the predicted saliency (logit > 0.5, the k-means protocol's threshold)
against the ground-truth foreground (mask > 0), and (2) the accuracy of k-means over one prototype per
image taken inside the GROUND-TRUTH foreground (so saliency errors do not count), ``k`` = object
classes, Hungarian-matched to each image's object class, with the confusion matrix of the first
k-means seed. Needs a dataset with one object class per image on a background class 0
(``data=objects``). ``--random-init`` scores the same network untrained.

``--collapse`` instead asks whether the embedding collapsed, on any dataset and without reading a
mask: the mean pairwise cosine similarity of the images' prototypes inside the PREDICTED saliency,
and of the prototypes in the key queue. Near 1 means every image maps to almost one direction. The
contrastive loss then sits at chance, ln(1 + queue size), whatever the lr.

    python bench/maskcontrast_diagnose.py logs/demo/last_run/checkpoints/last.ckpt --split val
    python bench/maskcontrast_diagnose.py <run>/checkpoints/last.ckpt --collapse
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


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    x = F.normalize(x.float(), dim=1)
    n = len(x)
    return float(((x @ x.T).sum() - n) / max(1, n * (n - 1)))


@torch.no_grad()
def collapse(ckpt: str, split: str, max_images: int = 64) -> None:
    cfg, module = load_checkpoint(ckpt)
    module.eval()
    data = instantiate(cfg.data, _convert_="all")
    loader = DataLoader(data.dataset(split, transform=data.eval_transform), batch_size=16)
    prototypes, seen = [], 0
    for batch in loader:
        features, saliency = module.layer_features(batch["image"], "projection")
        weights = (saliency > 0.5).unsqueeze(1).float()  # [B,1,H,W]
        keep = weights.sum((1, 2, 3)) > 0  # images with a predicted object
        prototypes.append(((features * weights).sum((2, 3)) / weights.sum((2, 3)).clamp_min(1))[keep])
        seen += len(batch["image"])
        if seen >= max_images:
            break
    x = torch.cat(prototypes)
    print(f"{ckpt}, {split}: mean pairwise cosine of {len(x)} predicted-saliency prototypes "
          f"{mean_pairwise_cosine(x):.3f}; of the {len(module.queue.queue)} queued key prototypes "
          f"{mean_pairwise_cosine(module.queue.queue):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--split", default="val")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--collapse", action="store_true", help="embedding collapse, any dataset, no mask read")
    args = parser.parse_args()
    if args.collapse:
        collapse(args.ckpt, args.split)
    else:
        diagnose(args.ckpt, args.split, args.random_init, args.seeds)


if __name__ == "__main__":
    main()
