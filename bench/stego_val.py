"""STEGO's validation curves from its Hydra multiruns (docs/stego.md): val mIoU of the cluster probe
(Hungarian-matched over the split) and of the linear probe after every epoch, per group of runs that
differ only in their seed (mean ± population std over seeds, percent).

    python bench/stego_val.py logs/stego_val/budget logs/stego_val/shifts

Each run directory of a sweep holds ``csv/metrics.csv`` (``logger=csv``) and ``.hydra/overrides.yaml``.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml


def curves(sweep: Path) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """{overrides without the seed: {step: [(cluster, linear) per seed]}} of every run in ``sweep``."""
    out: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for metrics in sorted(sweep.glob("*/csv/metrics.csv")):
        overrides = yaml.safe_load((metrics.parents[1] / ".hydra" / "overrides.yaml").read_text())
        key = " ".join(o for o in overrides if o.startswith("model."))
        for row in csv.DictReader(metrics.open()):
            if row.get("val/miou"):
                out[key or "defaults"][int(row["step"]) + 1].append((float(row["val/miou"]), float(row["val/linear/miou"])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", type=Path, nargs="+")
    args = parser.parse_args()
    print("| sweep | settings | steps | seeds | val cluster mIoU (%) | val linear mIoU (%) |\n|---|---|---|---|---|---|")
    for sweep in args.sweeps:
        for key, steps in curves(sweep).items():
            for step, values in sorted(steps.items()):
                v = np.array(values) * 100
                print(f"| {sweep.name} | {key} | {step} | {len(v)} | {v[:, 0].mean():.1f} ± {v[:, 0].std():.1f} "
                      f"| {v[:, 1].mean():.1f} ± {v[:, 1].std():.1f} |")


if __name__ == "__main__":
    main()
