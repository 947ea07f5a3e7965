"""Score trained runs (twin students, single networks on a prior) with BOTH cluster matchings.

``train.py`` logs one matching (``model.matching``); docs/twins.md reports Hungarian and majority-vote
mIoU side by side (and ``clusters_used``: how many of the K predicted clusters cover at least 1 % of
the split's pixels), so this re-evaluates each run's ``checkpoints/last.ckpt`` on a split with the
run's own data config (its evaluation transform) and prints one Markdown table, plus mean ± std over
runs whose directory names differ only in a trailing ``_s<seed>``.

    python bench/twins.py logs/twins_runs/stanford_twin_s{0,1,2} logs/twins_runs/stanford_single_s{0,1,2}
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from usgs.metrics import SegmentationMetric  # noqa: E402
from usgs.run.checkpoints import load_checkpoint  # noqa: E402

MATCHINGS = ("hungarian", "majority")


@torch.no_grad()
def score_run(run: Path, split: str) -> dict[str, float]:
    """mIoU and pixel accuracy (in %) of a run's last checkpoint on ``split``, per matching."""
    cfg, model = load_checkpoint(run / "checkpoints" / "last.ckpt")
    model.eval()
    data = instantiate(cfg.data, _convert_="all")
    dataset = data.dataset(split, transform=data.eval_transform)
    k = int(cfg.model.get("num_predictions") or data.num_classes)
    metrics = {m: SegmentationMetric(data.num_classes, k, m) for m in MATCHINGS}
    counts = torch.zeros(k)
    for batch in DataLoader(dataset, batch_size=data.eval_batch_size):
        pred = model.predict(batch["image"]).argmax(1)
        counts += torch.bincount(pred.flatten(), minlength=k).float()
        for metric in metrics.values():
            metric.update(pred, batch["mask"])
    # A network that collapses onto a few of the prior's K clusters covers the split with them.
    out: dict[str, float] = {"clusters_used": float((counts / counts.sum() >= 0.01).sum())}
    for name, metric in metrics.items():
        scores = metric.compute()
        out[f"miou_{name}"] = 100 * float(scores["miou"])
        out[f"pixel_accuracy_{name}"] = 100 * float(scores["pixel_accuracy"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (with checkpoints/last.ckpt)")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {run: score_run(run, args.split) for run in args.runs}
    keys = [f"{q}_{m}" for m in MATCHINGS for q in ("miou", "pixel_accuracy")] + ["clusters_used"]
    print("| run | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for run, scores in results.items():
        print(f"| {run.name} | " + " | ".join(f"{scores[k]:.2f}" for k in keys) + " |")
    groups: dict[str, list[dict[str, float]]] = {}
    for run, scores in results.items():
        groups.setdefault(re.sub(r"_s\d+$", "", run.name), []).append(scores)
    print("\n| runs | n | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
    for name, runs in groups.items():
        cells = []
        for k in keys:
            values = [r[k] for r in runs]
            std = statistics.pstdev(values)  # population std, the suite's convention
            cells.append(f"{statistics.mean(values):.2f} ± {std:.2f}")
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
