"""Defaults of the label-free priors chosen on val, then scored once on test (issue 13, item 5).

kmeans (``prior=kmeans``) on Stanford Background, the seeded three-way split of ``data=stanford``:
the prior of the VAL images is computed from those images alone (local and global stage, no label
read, as ``make_priors.py data.split=val`` does); val masks score each setting with majority-vote
mIoU at the default G = 40 (plus Hungarian mIoU at G = 8). Stage 1: colour space x position weight at 1024
samples per image; stage 2: the sample count at the stage-1 winner. The best mean val mIoU over
``--seeds`` wins.

saliency_unsup (``prior=saliency_unsup``) on Weizmann Horse, the split of ``data=weizmann``: for each
superpixel setting (resolution x grid, then compactness at the winner) the continuous maps are computed
once and every threshold is scored (foreground IoU) on VAL; the best setting and threshold win.

Then, once, the chosen settings are scored on TEST (the prior computed from the test images).

    OMP_NUM_THREADS=1 python bench/sweep_priors.py kmeans --seeds 0 1
    OMP_NUM_THREADS=1 python bench/sweep_priors.py saliency
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from priors import LocalOnly, run_prior  # noqa: E402 - bench/priors.py (this folder is on sys.path when run as a script)

from usgs.data.base import SegmentationDataModule
from usgs.data.stanford import StanfordDataModule
from usgs.data.weizmann import WeizmannDataModule
from usgs.priors.base import MaskPrior
from usgs.priors.kmeans import TorchKMeansPrior
from usgs.priors.morphology import Morphology
from usgs.priors.report import markdown_table, saliency_scores, semantic_scores
from usgs.priors.saliency import UnsupervisedSaliencyPrior

DATA = Path(os.environ.get("USGS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
COLOUR_SPACES = ("rgb", "lab", "hsv")
XY_WEIGHTS = (0.0, 0.25, 0.5, 1.0)
SAMPLES = (256, 1024, 4096)
THRESHOLDS = tuple(np.round(np.arange(0.30, 0.81, 0.05), 2))
SP_SIZES = (48, 64, 96)           # superpixel resolution of saliency_unsup
SP_GRIDS = (6, 8, 12)             # superpixels per side
SP_COMPACTNESS = (1.0, 3.0, 10.0)


def load_split(dm: SegmentationDataModule, split: str, key: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Raw images and ``key`` maps (mask / saliency) of ``split``."""
    dataset = dm.dataset(split, transform=None)
    raw = [dataset.load(i) for i in range(len(dataset))]
    return [r["image"] for r in raw], [r[key] for r in raw]


def local_states(prior: MaskPrior, images: Sequence[np.ndarray]) -> list:
    return run_prior(LocalOnly(prior), images)[2]


def kmeans_row(settings: dict[str, Any], seeds: Sequence[int], images: list, gts: list) -> dict:
    scores: dict[str, list[float]] = {"G=40 mIoU (majority)": [], "G=8 mIoU (Hungarian)": [], "ms/image": []}
    for seed, g in itertools.product(seeds, (40, 8)):
        prior = TorchKMeansPrior(k=g, seed=seed, postprocess=Morphology(kernel=5), **settings)
        maps, seconds, _ = run_prior(prior, images)
        matching = "majority" if g == 40 else "hungarian"
        key = "G=40 mIoU (majority)" if g == 40 else "G=8 mIoU (Hungarian)"
        scores[key].append(semantic_scores(maps, gts, 8, g)[f"miou_{matching}"])
        if g == 40:
            scores["ms/image"].append(1000 * seconds / len(images))
    row = {**settings, **{k: f"{np.mean(v):.1f} ± {np.std(v):.1f}" for k, v in scores.items()}}
    row["_key"] = float(np.mean(scores["G=40 mIoU (majority)"]))
    print(row, flush=True)
    return row


def sweep_kmeans(args: argparse.Namespace) -> str:
    dm = StanfordDataModule(root=DATA / "stanford_background" / "iccv09Data", num_classes=8)
    val, val_gt = load_split(dm, "val", "mask")
    grid = [
        {"colour_space": c, "xy_weight": w, "samples_per_image": 1024}
        for c in COLOUR_SPACES
        for w in XY_WEIGHTS
    ]
    rows = [kmeans_row(s, args.seeds, val, val_gt) for s in grid]
    best = max(rows, key=lambda r: r["_key"])
    chosen = {"colour_space": best["colour_space"], "xy_weight": best["xy_weight"]}
    rows += [
        kmeans_row({**chosen, "samples_per_image": n}, args.seeds, val, val_gt) for n in SAMPLES if n != 1024
    ]
    best = max(rows, key=lambda r: r["_key"])
    chosen = {k: best[k] for k in ("colour_space", "xy_weight", "samples_per_image")}
    test, test_gt = load_split(dm, "test", "mask")
    final = kmeans_row(chosen, args.test_seeds, test, test_gt)
    for row in [*rows, final]:
        row.pop("_key")
    return (
        f"Stanford val ({len(val)} images), seeds {args.seeds}:\n\n"
        + markdown_table(rows)
        + f"\n\nChosen on val: {chosen}. Test ({len(test)} images, computed once after choosing), "
        f"seeds {args.test_seeds}:\n\n" + markdown_table([final])
    )


def saliency_rows(settings: dict[str, Any], images: list, gts: list, thresholds: Sequence[float]) -> list[dict]:
    """One row per threshold for the superpixel ``settings`` (the continuous maps computed once)."""
    prior = UnsupervisedSaliencyPrior(**settings)
    states = local_states(prior, images)
    rows = []
    for threshold in thresholds:
        prior.threshold = float(threshold)
        maps = [prior.finalize(im, st) for im, st in zip(images, states, strict=True)]
        scores = saliency_scores(maps, gts)  # fractions; markdown_table prints percent
        rows.append({**settings, "threshold": threshold, **scores,
                     "no proposal": sum(bool((m == 255).all()) for m in maps)})
    best = max(rows, key=lambda r: r["iou"])
    print(best, flush=True)
    return rows


def sweep_saliency(args: argparse.Namespace) -> str:
    """Stage 1: superpixel resolution x grid (compactness 3), each at its best threshold; stage 2:
    compactness at the winner; all on val by foreground IoU. Then the chosen setting once on test."""
    dm = WeizmannDataModule(root=DATA / "weizmann_horse" / "weizmann_horse_db", num_classes=2)
    images, gts = load_split(dm, "val", "saliency")
    best_rows = [max(saliency_rows({"size": s, "grid": g, "compactness": 3.0}, images, gts, THRESHOLDS),
                     key=lambda r: r["iou"]) for s in SP_SIZES for g in SP_GRIDS]
    winner = max(best_rows, key=lambda r: r["iou"])
    best_rows += [max(saliency_rows({"size": winner["size"], "grid": winner["grid"], "compactness": c},
                                    images, gts, THRESHOLDS), key=lambda r: r["iou"])
                  for c in SP_COMPACTNESS if c != 3.0]
    winner = max(best_rows, key=lambda r: r["iou"])
    chosen = {k: winner[k] for k in ("size", "grid", "compactness")}
    threshold_rows = saliency_rows(chosen, images, gts, THRESHOLDS)
    test_images, test_gts = load_split(dm, "test", "saliency")
    final = saliency_rows(chosen, test_images, test_gts, (winner["threshold"],))
    return (f"Weizmann val ({len(images)} images), each superpixel setting at its best threshold:\n\n"
            + markdown_table(best_rows)
            + f"\n\nThresholds at the chosen setting {chosen}, val:\n\n" + markdown_table(threshold_rows)
            + f"\n\nChosen on val: {chosen}, threshold {winner['threshold']}. Test ({len(test_images)} "
            "images, computed once after choosing):\n\n" + markdown_table(final))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["kmeans", "saliency"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the val sweep")
    parser.add_argument("--test-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="write the tables here (Markdown)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # see bench/priors.py: one thread is faster on a shared CPU
    cv2.setNumThreads(1)
    text = sweep_kmeans(args) if args.what == "kmeans" else sweep_saliency(args)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
