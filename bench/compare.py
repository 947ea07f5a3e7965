"""One comparison table: frozen-feature baselines, MaskContrast and STEGO on the same data, backbone and
protocol (shorter side 320, centre crop 320, flip averaging, with and without the dense CRF), seed
mean ± population std.

    OMP_NUM_THREADS=2 nice -n 5 python bench/compare.py --data stanford --seeds 0 1 2
    python bench/compare.py --report-only          # the table from the finished runs

Rows (``--rows``, all by default):

* ``kmeans``: ``evaluate.py model=frozen_backbone task=kmeans`` (pixel k-means, k = classes, Hungarian)
  on the test split, one seed of k-means per run;
* ``linear``: ``evaluate.py model=frozen_backbone task=linear_probe task.layer=embedding`` (train split);
* ``stego``: ``train.py experiment=stego_<data>`` (its test step: cluster and linear probe, ± CRF);
* ``maskcontrast``: ``train.py experiment=maskcontrast_<data>`` on the same backbone, then evaluate.py's
  k-means of its embeddings (needs its saliency prior; slow on CPU, so opt-in with ``--rows``).

Each run writes ``<out>/<row>/s<seed>/metrics.json``; a finished run is read back, not redone.
Writes ``<out>/table.md`` and ``<out>/results.json`` and prints the table (percent).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COMMON = ("data.num_workers=0", "data.persistent_workers=false")
EVAL_320 = ("data.eval_transform.size=320", "++data.eval_transform.center_crop=true", "data.eval_batch_size=8")
# row -> {column: metrics.json key} ; columns: cluster / linear, each without and with CRF
COLUMNS = ("unsupervised", "unsupervised + CRF", "linear", "linear + CRF")
KEYS = {
    "kmeans": {"unsupervised": "kmeans/pixels/miou"},
    "linear": {"linear": "linear_probe/linear_probe/miou"},
    "stego": {"unsupervised": "test/cluster/miou", "unsupervised + CRF": "test/cluster/miou_crf",
              "linear": "test/linear/miou", "linear + CRF": "test/linear/miou_crf"},
    "maskcontrast": {"unsupervised": "kmeans/pixels/miou"},
}
LABELS = {"kmeans": "frozen features + k-means", "linear": "frozen features + linear probe",
          "stego": "STEGO (cluster / linear probe)", "maskcontrast": "MaskContrast + k-means"}


def _backbone(args: argparse.Namespace, key: str) -> list[str]:
    return [f"{key}.name={args.backbone}", f"{key}.weights={args.weights}",
            *([f"++{key}.output_stride={args.output_stride}"] if args.output_stride else [])]


def commands(row: str, seed: int, run: Path, args: argparse.Namespace) -> list[list[str]]:
    """The commands of one (row, seed) run; each evaluate.py pass is made twice, without and with CRF."""
    py = sys.executable
    frozen = ["model=frozen_backbone", *_backbone(args, "model.backbone"), f"data={args.data}", "split=test",
              "flip=true", f"seed={seed}", *COMMON, *EVAL_320, *args.extra]
    if row in ("kmeans", "linear"):
        task = (["task=kmeans", "task.pixels_per_image=100", f"task.seeds=[{seed}]"] if row == "kmeans" else
                ["task=linear_probe", "task.layer=embedding", "task.pixels_per_image=100", f"task.seeds=[{seed}]"])
        return [[py, "evaluate.py", *frozen, *task, f"crf={crf}", f"hydra.run.dir={run / name}"]
                for crf, name in (("false", "plain"), ("true", "crf"))]
    if row == "stego":
        return [[py, "train.py", f"experiment=stego_{args.data}", f"seed={seed}", *COMMON, "logger=csv",
                 *_backbone(args, "model.backbone"), *args.extra, f"hydra.run.dir={run}"]]
    if row == "maskcontrast":
        train = [py, "train.py", f"experiment=maskcontrast_{args.data}", f"seed={seed}", *COMMON, "logger=csv",
                 "callbacks.prediction_overlays=null", *args.extra, f"hydra.run.dir={run / 'train'}"]
        evaluate = [[py, "evaluate.py", f"ckpt_path={run / 'train' / 'checkpoints' / 'last.ckpt'}", "task=kmeans",
                     "task.pixels_per_image=100", f"task.seeds=[{seed}]", "split=test", "flip=true", f"crf={crf}",
                     *COMMON, *EVAL_320, "data_from_checkpoint=false", f"data={args.data}",
                     f"hydra.run.dir={run / name}"] for crf, name in (("false", "plain"), ("true", "crf"))]
        return [train, *evaluate]
    raise ValueError(f"Unknown row {row!r}; valid: {', '.join(KEYS)}")


def read_run(row: str, run: Path) -> dict[str, float] | None:
    """The row's columns of one finished run, or None if it has not finished."""
    if row == "stego":
        path = run / "metrics.json"
        if not path.is_file():
            return None
        metrics = json.loads(path.read_text())
        return {col: float(metrics[key]) for col, key in KEYS[row].items() if key in metrics}
    out = {}
    for name, suffix in (("plain", ""), ("crf", " + CRF")):
        path = run / name / "metrics.json"
        if not path.is_file():
            return None
        metrics = json.loads(path.read_text())
        for col, key in KEYS[row].items():
            out[col + suffix] = float(metrics[key])
    return out


def table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| method | seeds | " + " | ".join(f"{c} mIoU (%)" for c in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for row, runs in results.items():
        cells = []
        for col in COLUMNS:
            values = [r[col] for r in runs if col in r]
            cells.append(f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}" if values else "-")
        lines.append(f"| {LABELS[row]} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="stanford")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="efficientnet_lite0")
    parser.add_argument("--output-stride", type=int, default=32, help="0: leave the backbone's default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=["kmeans", "linear", "stego"], choices=list(KEYS))
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "compare")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every command")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    out = args.out / args.data
    results: dict[str, list[dict[str, float]]] = {}
    for row in args.rows:
        results[row] = []
        for seed in args.seeds:
            run = out / row / f"s{seed}"
            if read_run(row, run) is None and not args.report_only:
                for command in commands(row, seed, run, args):
                    print("[compare]", " ".join(command), flush=True)
                    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PROJECT_ROOT": str(ROOT)})
            finished = read_run(row, run)
            if finished is not None:
                results[row].append(finished)
    text = table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
