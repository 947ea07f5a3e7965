"""Frozen-feature k-means of STEGO's backbone on the test split, cheap enough for a loaded CPU.

    OMP_NUM_THREADS=1 python bench/stego_baselines.py --seeds 0 1 2 [--crf] --out logs/compare/stanford/kmeans_lowres.json

``evaluate.py model=frozen_backbone task=kmeans`` upsamples the 1280-d EfficientNet map to every
pixel before it assigns clusters (measured here: 171 s per batch of 8 images at 320 px on the shared
2-core machine, so it did not finish in the session). This script keeps the features at the
backbone's resolution (10 x 10 at 320 px), fits the same pixel k-means (L2-normalised features, PCA
whitening, k = classes, ``kmeans_large``) on 100 sampled locations per image, and upsamples the
cluster logits (``-squared distance``) bilinearly to the image instead. Same data, transform (shorter
side 320, centre crop), flip averaging, Hungarian matching over the split and CRF as STEGO's test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's usgs

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate

from usgs.data.transforms import denormalize
from usgs.evaluation.clustering import kmeans_large, pca_whitening, whiten
from usgs.methods.stego_data import frozen_features
from usgs.metrics import SegmentationMetric
from usgs.priors.crf import STEGO_CRF, dense_crf

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--crf", action="store_true")
    parser.add_argument("--no-whiten", action="store_true", help="k-means of the unit features, no PCA whitening")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "compare" / "stanford" / "kmeans_lowres.json")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", ["experiment=stego_stanford", "data.num_workers=0"])
    datamodule = instantiate(cfg.data, _convert_="all")
    backbone = instantiate(cfg.model.backbone).eval()
    dataset = datamodule.dataset("test")
    feats, batches = [], []
    with torch.no_grad():
        for start in range(0, len(dataset), 8):
            items = [dataset[i] for i in range(start, min(start + 8, len(dataset)))]
            image = torch.stack([s["image"] for s in items])
            f = frozen_features(backbone, image) + frozen_features(backbone, image.flip(3)).flip(3)
            feats.append(F.normalize(f / 2, dim=1))
            batches.append((denormalize(image).numpy(), torch.stack([s["mask"] for s in items])))
            print(f"features {start + len(items)}/{len(dataset)}", flush=True)
    n = datamodule.num_classes
    results = {}
    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        sample = torch.cat([f.flatten(2).permute(0, 2, 1)[:, torch.randperm(f.shape[2] * f.shape[3], generator=g)[:100]]
                            .reshape(-1, f.shape[1]) for f in feats])
        transform = None if args.no_whiten else pca_whitening(sample)
        centers = kmeans_large(whiten(sample, transform), n, seed=seed).centers
        plain, crf = SegmentationMetric(n, n, "hungarian"), SegmentationMetric(n, n, "hungarian")
        for f, (rgb, mask) in zip(feats, batches, strict=True):
            x = whiten(f.permute(0, 2, 3, 1), transform)
            logits = -torch.cdist(x.flatten(1, 2), centers.unsqueeze(0).expand(x.shape[0], -1, -1)) ** 2
            logits = logits.view(*x.shape[:3], n).permute(0, 3, 1, 2)
            probs = F.interpolate(logits, mask.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
            plain.update(probs.argmax(1), mask)
            if args.crf:
                refined = [torch.from_numpy(dense_crf(i, p.numpy(), **STEGO_CRF).argmax(0)) for i, p in zip(rgb, probs)]
                crf.update(torch.stack(refined), mask)
        scores = {"miou": float(plain.compute()["miou"]), "accuracy": float(plain.compute()["pixel_accuracy"])}
        if args.crf:
            scores |= {"miou_crf": float(crf.compute()["miou"]), "accuracy_crf": float(crf.compute()["pixel_accuracy"])}
        results[seed] = scores
        print(seed, scores, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
