"""STEGO's validation curves from its Hydra multiruns (docs/stego.md): val mIoU of the cluster probe
(Hungarian-matched over the split) and of the linear probe after every epoch, per group of runs that
differ only in their seed (mean ± population std over seeds, percent). Runs of different sweeps with
the same settings are pooled; an override equal to ``conf/model/stego.yaml``'s value counts as no change.

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

MODEL_DEFAULTS = yaml.safe_load((Path(__file__).parents[1] / "conf" / "model" / "stego.yaml").read_text())


def settings(overrides: list[str]) -> str:
    """The ``model.*`` overrides that change a default of conf/model/stego.yaml, or "defaults"."""
    changed = []
    for override in overrides:
        name, _, value = override.partition("=")
        if name.startswith("model.") and yaml.safe_load(value) != MODEL_DEFAULTS.get(name.removeprefix("model.")):
            changed.append(override)
    return " ".join(sorted(changed)) or "defaults"


def curves(sweeps: list[Path]) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """{settings: {step: [(cluster, linear) per run]}} of every run in ``sweeps``."""
    out: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for sweep in sweeps:
        for metrics in sorted(sweep.glob("*/csv/metrics.csv")):
            key = settings(yaml.safe_load((metrics.parents[1] / ".hydra" / "overrides.yaml").read_text()))
            for row in csv.DictReader(metrics.open()):
                if row.get("val/miou"):
                    out[key][int(row["step"]) + 1].append((float(row["val/miou"]), float(row["val/linear/miou"])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", type=Path, nargs="+")
    args = parser.parse_args()
    print("| settings | steps | seeds | val cluster mIoU (%) | val linear mIoU (%) |\n|---|---|---|---|---|")
    for key, steps in sorted(curves(args.sweeps).items()):
        for step, values in sorted(steps.items()):
            v = np.array(values) * 100
            print(f"| {key} | {step} | {len(v)} | {v[:, 0].mean():.1f} ± {v[:, 0].std():.1f} "
                  f"| {v[:, 1].mean():.1f} ± {v[:, 1].std():.1f} |")


if __name__ == "__main__":
    main()
