"""``make demo``'s last step: the demo run against its three baselines, one table, ``summary.json``.

The Makefile's earlier steps write, under ``logs/demo`` (each a plain command a user can rerun):

* ``last_run/``: ``train.py experiment=maskcontrast_demo`` (MaskContrast, ``data=objects``, its
  saliency from ``prior=saliency_unsup`` on the same images: no input is computed from the masks);
* ``trained/``: ``evaluate.py task=kmeans split=test`` on its ``last.ckpt`` (the label-free checkpoint);
* ``random_init/``: the same evaluation of the same network untrained;
* ``prior/``: ``make_priors.py prior=kmeans split=test`` with one cluster per class, the colour
  k-means prior (its global clusters fitted on train);
* ``saliency_only/``: ``evaluate.py control=saliency_only``: the saliency the method was given, alone
  (every salient pixel one cluster, the rest background), on the same split and matching.

``python -m usgs.run.demo logs/demo`` reads them and writes ``logs/demo/summary.json`` as
``{"trained": {...}, "random_init": {...}, "prior": {...}, "saliency_only": {...}}`` with the same keys
in each: ``kmeans_miou`` (the headline: MaskContrast's k-means protocol on predicted-saliency
prototypes for the networks; the prior's own clusters for the prior; the input saliency as one
cluster for saliency_only; all Hungarian-matched on the IoU matrix) and ``pixel_accuracy``; fractions
in [0, 1]. It prints the table in percent, whether the trained network beats the best of the other
three rows (the demo's claim of learning), and the overlay's path.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from usgs.run.outputs import atomic_write_text

ROWS = {
    "trained": "MaskContrast, trained (last.ckpt)",
    "random_init": "same network, random init",
    "prior": "colour k-means prior (one cluster per class)",
    "saliency_only": "its input saliency alone (saliency_unsup, one cluster)",
}
BASELINES = ("random_init", "prior", "saliency_only")


def _read(path: Path, step: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the demo's {step} step first (see the Makefile's demo target)")
    return json.loads(path.read_text())


def summarize(demo_dir: Path) -> dict[str, dict[str, float]]:
    """The four rows of the demo table (fractions), read from the steps' outputs under ``demo_dir``."""
    summary: dict[str, dict[str, float]] = {}
    for name in ("trained", "random_init"):
        metrics = _read(demo_dir / name / "metrics.json", f"evaluate.py ({name})")
        summary[name] = {"kmeans_miou": metrics["kmeans/prototypes/miou"],
                         "pixel_accuracy": metrics["kmeans/prototypes/pixel_accuracy"]}
    report = _read(demo_dir / "prior" / "report.json", "make_priors.py")
    summary["prior"] = {"kmeans_miou": report["miou_hungarian_iou"],
                        "pixel_accuracy": report["pixel_accuracy_hungarian_iou"]}
    control = _read(demo_dir / "saliency_only" / "metrics.json", "evaluate.py control=saliency_only")
    summary["saliency_only"] = {"kmeans_miou": control["kmeans/saliency_only/miou"],
                                "pixel_accuracy": control["kmeans/saliency_only/pixel_accuracy"]}
    return summary


def table(summary: dict[str, dict[str, float]]) -> str:
    """Markdown table in percent, plus the check the demo is meant to show: trained vs the best baseline."""
    lines = ["| | k-means mIoU (%) | pixel accuracy (%) |", "|---|---|---|"]
    lines += [f"| {ROWS[k]} | {100 * v['kmeans_miou']:.1f} | {100 * v['pixel_accuracy']:.1f} |"
              for k, v in summary.items()]
    trained = summary["trained"]["kmeans_miou"]
    best = max(BASELINES, key=lambda k: summary[k]["kmeans_miou"])
    margin = 100 * (trained - summary[best]["kmeans_miou"])
    verdict = "learnt more than its inputs give" if margin > 0 else "NOT above its best baseline"
    lines += ["", f"trained - best baseline ({best}): {margin:+.1f} points: {verdict}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_dir", type=Path, nargs="?", default=Path("logs/demo"))
    args = parser.parse_args(argv)
    summary = summarize(args.demo_dir)
    atomic_write_text(args.demo_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"\n# make demo: MaskContrast on data=objects, test split\n\n{table(summary)}")
    print(f"[usgs] summary: {args.demo_dir / 'summary.json'}")
    print(f"[usgs] overlay (image | ground truth | prediction): "
          f"{args.demo_dir / 'trained' / 'overlays' / 'kmeans_prototypes.png'}")


if __name__ == "__main__":
    main()
