"""One comparison table: frozen-feature baselines, MaskContrast and STEGO on the same data, backbone and
protocol (shorter side 320, centre crop 320, flip averaging, with and without the dense CRF), seed
mean ± population std.

    OMP_NUM_THREADS=2 nice -n 5 python bench/compare.py --data stanford --seeds 0 1 2
    python bench/compare.py --report-only          # the table from the finished runs

Rows (``--rows``, all by default):

* ``kmeans``: ``evaluate.py model=frozen_backbone task=kmeans`` (pixel k-means, k = classes, Hungarian)
  on the test split; the frozen features do not depend on the seed, so one run fits k-means once per
  seed (``task.seeds=[...]``) and reports their mean ± population std;
* ``linear``: ``evaluate.py model=frozen_backbone task=linear_probe task.layer=embedding`` (fitted on
  the train split, one probe per seed of its pixel sampling, as for k-means);
* ``stego``: ``train.py experiment=stego_<data>`` (its test step: cluster and linear probe, ± CRF);
* ``maskcontrast``: ``train.py experiment=maskcontrast_<data>`` on the same backbone, then evaluate.py's
  k-means of its embeddings (needs its saliency prior; slow on CPU, so opt-in with ``--rows``).

Each run writes ``<out>/<row>/s<seed>/metrics.json`` (frozen rows: ``<out>/<row>/all/``); a finished
run is read back, not redone.
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


FROZEN = ("kmeans", "linear")  # one run, every seed inside it


def commands(row: str, seed: int, run: Path, args: argparse.Namespace) -> list[list[str]]:
    """The commands of one (row, seed) run; each evaluate.py pass is made twice, without and with CRF."""
    seeds = ",".join(str(s) for s in args.seeds)
    py = sys.executable
    frozen = ["model=frozen_backbone", *_backbone(args, "model.backbone"), f"data={args.data}", "split=test",
              "flip=true", f"seed={seed}", *COMMON, *EVAL_320, *args.extra]
    if row in ("kmeans", "linear"):
        task = (["task=kmeans", "task.pixels_per_image=100", f"task.seeds=[{seeds}]"] if row == "kmeans" else
                ["task=linear_probe", "task.layer=embedding", "task.pixels_per_image=100", f"task.seeds=[{seeds}]"])
        return [[py, "evaluate.py", *frozen, *task, f"crf={crf}", f"hydra.run.dir={run / name}"]
                for crf, name in (("false", "plain"), ("true", "crf"))]
    if row == "stego":
        return [[py, "train.py", f"experiment=stego_{args.data}", f"seed={seed}", *COMMON, "logger=csv",
                 *_backbone(args, "model.backbone"), *args.extra, f"hydra.run.dir={run}"]]
    if row == "maskcontrast":  # its DeepLab on the same backbone (the experiment's lr: chosen on val for Lite0)
        train = [py, "train.py", f"experiment=maskcontrast_{args.data}", f"seed={seed}", *COMMON, "logger=csv",
                 f"model.net.backbone={args.backbone}", f"model.net.weights={args.weights}",
                 "callbacks.prediction_overlays=null", *args.extra,
                 f"hydra.run.dir={run / 'train'}"]
        evaluate = [[py, "evaluate.py", f"ckpt_path={run / 'train' / 'checkpoints' / 'last.ckpt'}", "task=kmeans",
                     "task.pixels_per_image=100", f"task.seeds=[{seed}]", "split=test", "flip=true", f"crf={crf}",
                     *COMMON, *EVAL_320, "data_from_checkpoint=false", f"data={args.data}",
                     f"hydra.run.dir={run / name}"] for crf, name in (("false", "plain"), ("true", "crf"))]
        return [train, *evaluate]
    raise ValueError(f"Unknown row {row!r}; valid: {', '.join(KEYS)}")


Cell = tuple[float, float, int]  # mean, population std, seeds


def read_run(row: str, run: Path) -> dict[str, float] | dict[str, Cell] | None:
    """The row's columns of one finished run (frozen rows: (mean, std, seeds)), or None if unfinished."""
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
            if row in FROZEN:
                out[col + suffix] = (float(metrics[key]), float(metrics[key + "_std"]),
                                     int(metrics[key.rsplit("/", 1)[0] + "/num_seeds"]))
            else:
                out[col + suffix] = float(metrics[key])
    return out


def summarise(row: str, runs: list[dict]) -> dict[str, Cell]:
    """Column -> (mean, population std, seeds) of a row's finished runs."""
    if row in FROZEN:
        return runs[0] if runs else {}
    cells = {}
    for col in COLUMNS:
        values = [r[col] for r in runs if col in r]
        if values:
            cells[col] = (float(np.mean(values)), float(np.std(values)), len(values))
    return cells


def table(results: dict[str, dict[str, Cell]]) -> str:
    lines = ["| method | seeds | " + " | ".join(f"{c} mIoU (%)" for c in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for row, cells in results.items():
        seeds = max((c[2] for c in cells.values()), default=0)
        text = [f"{100 * cells[c][0]:.1f} ± {100 * cells[c][1]:.1f}" if c in cells else "-" for c in COLUMNS]
        lines.append(f"| {LABELS[row]} | {seeds} | " + " | ".join(text) + " |")
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
    results: dict[str, dict[str, Cell]] = {}
    for row in args.rows:
        runs: list[dict] = []
        for seed in args.seeds[:1] if row in FROZEN else args.seeds:
            run = out / row / ("all" if row in FROZEN else f"s{seed}")
            if read_run(row, run) is None and not args.report_only:
                for command in commands(row, seed, run, args):
                    print("[compare]", " ".join(command), flush=True)
                    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PROJECT_ROOT": str(ROOT)})
            finished = read_run(row, run)
            if finished is not None:
                runs.append(finished)
        results[row] = summarise(row, runs)
    text = table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
