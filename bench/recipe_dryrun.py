"""Full-size dry runs of the papers' recipes (conf/experiment/paper/): a few optimiser steps each at the
recipe's true crop, backbone and output stride, on stand-in data in the dataset's real on-disk layout
(usgs/data/standin.py), measuring seconds per step, peak RSS and FLOPs per step; the FLOPs project the
training's GPU hours on one H200.

    nice -n 5 python bench/recipe_dryrun.py --out logs/recipe_dryrun.jsonl [--recipes NAME ...]
        [--steps 2] [--max-batch 8] [--device cpu|gpu] [--utilisation 0.3]

Each recipe runs in its own process (its peak RSS is its own), one at a time; a finished recipe is one
JSON line of --out, written when it finishes, and a rerun skips the recipes already there (resumable).
``--max-batch`` caps the batch on the CPU (a batch of 128 at 224 px does not fit a shared 24 GiB
machine): FLOPs and seconds are then measured at the cap and scaled linearly to the recipe's batch
(FLOPs scale exactly; the seconds only roughly). Weights are random (``weights=null``): a dry run
measures cost, not accuracy. Stand-ins replace what a step needs but cannot have here (recorded per
recipe in ``substitutes``). ``--table`` prints the markdown table of a results file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's usgs, also in the child processes
# Dense BF16 tensor-core peak of one H200 SXM (NVIDIA's H200 datasheet: 1,979 TFLOP/s with sparsity,
# half of it dense); the utilisation is an assumption, stated with every projection.
H200_PEAK_FLOPS = 989e12
STANDIN = {"voc": "voc", "cityscapes": "cityscapes", "vaihingen": "vaihingen", "intel": "intel"}
VAIHINGEN_TILES = ["data.train_tiles=[1,2,3]", "data.weak_tiles=[4]", "data.val_tiles=[5]", "data.test_tiles=[5]"]

# recipe -> (stand-in dataset, training images per epoch of the real data in our split (None: the
# recipe's budget is trainer.max_steps or a crop count), overrides that only replace what needs files
# or another run's checkpoint here)
RECIPES: dict[str, tuple[str, int | None, list[str]]] = {
    # VOC train_aug 10,582 minus the 146 val images carved out of train.txt (usgs/data/voc.py)
    "maskcontrast_voc_supervised_saliency": ("voc", 10436, ["model.net.weights=null"]),
    "maskcontrast_voc_unsupervised_saliency": ("voc", 10436, ["model.net.weights=null"]),
    # Intel seg_train 14,034 minus the 20% val carve
    "twins_intel": ("intel", 11227, ["model.net.weights=null"]),
    # VOC train.txt 1,464 minus the 146 val images
    "twins_voc_finetune": ("voc", 1318, ["model.pretrained=null"]),
    # Cityscapes train 2,975 minus the 10% val carve
    "clusternet_cityscapes": ("cityscapes", 2678, ["model.net.weights=null"]),
    "pspnet_cityscapes": ("cityscapes", 2678, ["model.net.weights=null"]),
    "vaihingen_task1": ("vaihingen", 10000, VAIHINGEN_TILES),
    "vaihingen_task2": ("vaihingen", 10000, [*VAIHINGEN_TILES, "model.pseudo_labeler=null"]),
    "wsss_voc_classifier": ("voc", None, ["model.backbone.weights=null"]),
    "wsss_voc": ("voc", None, ["model.net.weights=null", "data.prior=null", "model.gt_fraction=1.0"]),
}
SUBSTITUTES = {
    "twins_voc_finetune": "random init instead of a twin checkpoint",
    "vaihingen_task1": "crops_per_epoch as the recipe; 5 stand-in tiles",
    "vaihingen_task2": "no online pseudo labeler (it needs the classifier checkpoint): its Grad-CAM forward is not counted",
    "wsss_voc": "trains on the masks (gt_fraction=1) instead of cached pseudo labels: the same step",
}


def _overrides(name: str, root: Path, batch: int | None, steps: int) -> list[str]:
    dataset, _, extra = RECIPES[name]
    batch_override = [f"data.batch_size={batch}"] if batch else []
    return [f"experiment=paper/{name}", f"data.root={root}", "data.num_workers=0", "data.persistent_workers=false",
            "logger=csv", "callbacks=none", "test=false", f"paths.priors_dir={root.parent / 'priors'}",
            *batch_override, *extra]


def _true_batch(name: str) -> int:
    from usgs.run.prior_auto import _compose

    return int(_compose("train", [f"experiment=paper/{name}"]).data.batch_size)


def write_standin(dataset: str, out: Path, images: int, scale: float) -> Path:
    from usgs.data import standin

    size = tuple(max(8, round(s * scale)) for s in standin.SIZES[dataset])
    if dataset == "vaihingen":
        return standin.write_vaihingen(out, areas=[1, 2, 3, 4, 5], size=size)  # type: ignore[arg-type]
    n = {"voc": 2 * images + 8, "cityscapes": images + 4, "intel": max(2, images // 4 + 2)}[dataset]
    return standin.WRITERS[dataset](out, n=n, size=size)  # type: ignore[operator]


def run_one(name: str, steps: int, max_batch: int | None, device: str, scale: float, work: Path) -> dict[str, Any]:
    """One recipe, ``steps`` optimiser steps: FLOPs counted on the first, the others timed."""
    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate
    from torch.utils.flop_counter import FlopCounterMode

    from usgs.run.prior_auto import _compose, ensure_priors

    true_batch = _true_batch(name)
    batch = min(true_batch, max_batch) if max_batch else true_batch
    dataset = RECIPES[name][0]
    root = write_standin(dataset, work / "data", batch * (steps + 1), scale)
    cfg = _compose("train", _overrides(name, root, batch, steps))
    cfg.paths.output_dir = str(work / "run")
    pl.seed_everything(0, workers=True)
    ensure_priors(cfg)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")

    class Probe(pl.Callback):
        """Wall time of every training batch; the FLOPs of the first one (counted under FlopCounterMode)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.flops = 0
            self.counter: FlopCounterMode | None = None

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            if device == "gpu":
                torch.cuda.synchronize()
            if batch_idx == 0:
                self.counter = FlopCounterMode(display=False)
                self.counter.__enter__()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if device == "gpu":
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self.start)
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                self.flops = int(self.counter.get_total_flops())
                self.counter = None

    probe = Probe()
    accelerator = {"cpu": {"accelerator": "cpu", "precision": "32-true"},
                   "gpu": {"accelerator": "gpu", "precision": "bf16-mixed"}}[device]
    trainer = instantiate(cfg.trainer, callbacks=[probe], logger=False, max_steps=steps, max_epochs=-1,
                          limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                          enable_progress_bar=False, deterministic=False, devices=1, **accelerator)
    trainer.fit(model, datamodule=datamodule)
    if len(probe.seconds) < steps:
        raise RuntimeError(f"{name}: {len(probe.seconds)} of {steps} steps ran (too few stand-in images?)")
    factor = true_batch / batch
    # timed: the steps after the first, which pays one-off allocations and the counter's dispatch
    seconds = float(statistics.median(probe.seconds[1:] or probe.seconds))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device == "gpu" else None
    per_epoch = RECIPES[name][1]
    max_steps = int(_compose("train", [f"experiment=paper/{name}"]).trainer.get("max_steps") or -1)
    epochs = int(_compose("train", [f"experiment=paper/{name}"]).trainer.max_epochs)
    total_steps = max_steps if max_steps > 0 else epochs * math.ceil(per_epoch / true_batch)
    return {
        "recipe": name, "device": device, "steps": steps, "true_batch": true_batch, "measured_batch": batch,
        "image_scale": scale, "seconds_per_step": seconds * factor, "measured_seconds": probe.seconds,
        "flops_per_step": probe.flops * factor, "peak_rss_gb": peak_gb, "peak_gpu_gb": peak_gpu,
        "total_steps": total_steps, "substitutes": SUBSTITUTES.get(name, ""),
        "torch_threads": torch.get_num_threads(),
    }


def projection(result: dict[str, Any], utilisation: float) -> float:
    """GPU hours of the whole training on one H200 at ``utilisation`` of its dense BF16 peak."""
    return result["flops_per_step"] * result["total_steps"] / (H200_PEAK_FLOPS * utilisation) / 3600


def table(results: list[dict[str, Any]], utilisation: float) -> str:
    rows = ["| recipe | device | batch (measured) | s/step | peak RSS (GiB) | TFLOPs/step | steps | "
            f"H200 hours at {utilisation:.0%} |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['recipe']} | {r['device']} | {r['true_batch']} ({r['measured_batch']}) | "
                    f"{r['seconds_per_step']:.1f} | {r['peak_rss_gb']:.1f} | {r['flops_per_step'] / 1e12:.2f} | "
                    f"{r['total_steps']} | {projection(r, utilisation):.3f} |")
    return "\n".join(rows)


def _done(out: Path) -> dict[str, dict[str, Any]]:
    if not out.is_file():
        return {}
    return {r["recipe"]: r for r in map(json.loads, out.read_text().splitlines()) if r.get("recipe")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=8, help="CPU cap on the batch (0: the recipe's)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--scale", type=float, default=1.0, help="stand-in image size factor (tests: < 1)")
    parser.add_argument("--utilisation", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "recipe_dryrun.jsonl")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides (tests)")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.table:
        print(table(list(_done(args.out).values()), args.utilisation))
        return
    if args.one:  # the child process: one recipe, its JSON on stdout's last line
        with tempfile.TemporaryDirectory(prefix="dryrun_") as work:
            if args.overrides:
                RECIPES[args.one][2].extend(args.overrides)
            result = run_one(args.one, args.steps, args.max_batch or None, args.device, args.scale, Path(work))
        print("RESULT " + json.dumps(result))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(args.out)
    for name in args.recipes:
        if name in done:
            print(f"{name}: already in {args.out}, skipped")
            continue
        command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--max-batch",
                   str(args.max_batch), "--device", args.device, "--scale", str(args.scale)]
        if args.overrides:
            command += ["--overrides", *args.overrides]
        started = time.time()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{name}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        result = {**json.loads(lines[-1][len("RESULT "):]), "wall_seconds": time.time() - started}
        with args.out.open("a") as handle:  # one finished recipe, one line: nothing half-written
            handle.write(json.dumps(result) + "\n")
        print(f"{name}: {result['seconds_per_step']:.1f} s/step, {result['flops_per_step'] / 1e12:.2f} TFLOPs/step, "
              f"{result['peak_rss_gb']:.1f} GiB, {projection(result, args.utilisation):.2f} H200 h", flush=True)
    markdown = args.out.with_suffix(".md")  # the table of every recipe so far, replaced whole
    partial = markdown.with_suffix(".md.tmp")
    partial.write_text(table(list(_done(args.out).values()), args.utilisation) + "\n")
    partial.replace(markdown)


if __name__ == "__main__":
    main()
