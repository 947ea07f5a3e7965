"""``make demo`` over several training seeds: mean ± population std of its summary table.

Each seed runs the Makefile's demo recipe into its own folder (``DEMO=<out>/s<seed>``,
``DEMO_ARGS=seed=<seed>``), timing the training step; folders with a ``summary.json`` are read back.

    python bench/demo_seeds.py --seeds 0 1 2 --out logs/demo_seeds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "demo_seeds")
    args = parser.parse_args()
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        folder = args.out / f"s{seed}"
        if not (folder / "summary.json").is_file():
            start = time.perf_counter()
            subprocess.run(["make", "demo", f"DEMO={folder}", f"DEMO_ARGS=seed={seed}"], cwd=ROOT, check=True)
            (folder / "make_demo_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
        for row, metrics in json.loads((folder / "summary.json").read_text()).items():
            for key, value in metrics.items():
                rows.setdefault(row, {}).setdefault(key, []).append(value)
    keys = sorted({k for metrics in rows.values() for k in metrics})
    print(f"\nseeds {args.seeds}, mean ± population std, percent\n")
    print("| | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for row, metrics in rows.items():
        cells = [f"{100 * np.mean(metrics[k]):.1f} ± {100 * np.std(metrics[k]):.1f}" for k in keys]
        print(f"| {row} | " + " | ".join(cells) + " |")
    ratio = np.array(rows["trained"]["kmeans_miou"]) / np.array(rows["random_init"]["kmeans_miou"])
    margin = np.array(rows["trained"]["kmeans_miou"]) - np.array(rows["prior"]["kmeans_miou"])
    print(f"\ntrained / random init per seed: {np.round(ratio, 2).tolist()}; "
          f"trained - prior per seed (points): {np.round(100 * margin, 1).tolist()}")


if __name__ == "__main__":
    main()
