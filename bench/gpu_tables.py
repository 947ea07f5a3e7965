"""One table of bench/gpu_results.sh's runs: every run's metrics.json, percent, mean ± std over seeds.

    python bench/gpu_tables.py logs/gpu_results_runs --out logs/gpu_results

Reads ``<runs>/<method>/seed_<s>/metrics.json`` (train.py and evaluate.py both write one) and
``<runs>/timings.tsv`` (wall seconds per step); writes ``gpu_results.md`` and ``gpu_results.json``.
Scores are fractions in the JSON files and percent in the table; ± is the population std (ddof 0),
the suite's one convention.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from usgs.atomic import atomic_write  # noqa: E402

# Final scores worth a column: test-split mIoU / pixel accuracy of train.py, every *miou of evaluate.py.
SKIP_PREFIXES = ("val/", "train/")


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """The run's split-level scores: mIoU and pixel-accuracy keys, not per-class IoU or val/train logs."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, int | float) and not key.startswith(SKIP_PREFIXES) and "/iou/" not in key
            and (key.endswith("miou") or key.endswith("pixel_accuracy"))}


def collect(runs: Path) -> dict[str, dict[str, list[float]]]:
    """{method: {metric: [value per seed]}} from ``runs/<method>/seed_*/metrics.json``."""
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(runs.glob("*/seed_*/metrics.json")):
        for key, value in headline(json.loads(path.read_text())).items():
            table[path.parent.parent.name][key].append(value)
    return table


def timings(runs: Path) -> dict[str, list[float]]:
    """{step without its seed: [wall seconds per seed]} from ``timings.tsv``."""
    seconds: dict[str, list[float]] = defaultdict(list)
    path = runs / "timings.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            name, value = line.split("\t")
            seconds[name.split("/seed_")[0]].append(float(value))
    return seconds


def mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean = float(np.mean(values)) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values)) * scale:.{digits}f}"


def markdown(table: dict[str, dict[str, list[float]]], seconds: dict[str, list[float]]) -> str:
    lines = ["| run | metric | value (%) | seeds | wall s |", "|---|---|---|---|---|"]
    for method in sorted(table):
        wall = mean_std(seconds[method], scale=1.0, digits=0) if method in seconds else "-"
        for key in sorted(table[method]):
            values = table[method][key]
            lines.append(f"| {method} | {key} | {mean_std(values)} | {len(values)} | {wall} |")
    total = sum(sum(v) for v in seconds.values())
    lines += ["", f"Scores in percent, mean ± population std (ddof 0) over seeds; total wall time {total:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="bench/gpu_results.sh's run folder ($RUNS)")
    parser.add_argument("--out", type=Path, default=Path("logs/gpu_results"))
    args = parser.parse_args(argv)
    table, seconds = collect(args.runs), timings(args.runs)
    if not table:
        raise SystemExit(f"no <method>/seed_<s>/metrics.json under {args.runs}: did bench/gpu_results.sh run?")
    text = markdown(table, seconds)
    atomic_write(args.out / "gpu_results.md", text)
    atomic_write(args.out / "gpu_results.json", json.dumps({"metrics": table, "wall_s": seconds}, indent=2))
    print(text)
    return text


if __name__ == "__main__":
    main()
