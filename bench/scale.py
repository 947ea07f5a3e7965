"""How cost grows with the data: wall time per image and peak RSS of every stage at N images.

Data: a generated VOC stand-in at VOC's image sizes (bench/voc_standin.py; ``data=voc``, val =
``val_fraction`` 0.25 of the N ``train`` images). Stages, each one real entry-point command in its own
process (peak RSS is that process's ``ru_maxrss`` from ``os.wait4``; DataLoader worker processes
are not included and are reported apart by the ``loader_*`` stages):

- ``priors_kmeans``, ``priors_saliency_unsup``, ``priors_feature_kmeans`` (frozen ResNet-18):
  ``make_priors.py`` on the train split;
- ``eval_kmeans``, ``eval_linear_probe``, ``eval_retrieval`` (oracle segments): ``evaluate.py
  model=frozen_backbone`` (ResNet-18) with its on-disk feature cache, one cache folder per stage (its
  first pass runs the network, its second reads the disk);
- ``loader_w0``, ``loader_w2``: the training DataLoader alone (images/s, ``num_workers`` 0 and 2);
- ``train_w0``, ``train_w2``: one epoch of ``train.py experiment=supervised`` (DeepLabv3-ResNet-18,
  224 px crops, no validation), images/s with ``num_workers`` 0 and 2;
- ``predict``: ``predict.py`` on every train image with ``train_w2``'s checkpoint.

The ResNet-18 weights are random (saved once to a file, as users pass theirs): cost does not depend
on the values. Results go to ``<work>/results.jsonl`` one line per finished stage, so a killed run
resumes where it stopped (``--force`` reruns). ``--table`` prints the BENCHMARKS.md table.

    nice -n 5 .venv/bin/python bench/scale.py --n 250 1000            # every stage
    nice -n 5 .venv/bin/python bench/scale.py --n 4000 --stages priors_kmeans eval_kmeans
    .venv/bin/python bench/scale.py --table
    .venv/bin/python bench/scale.py --disk          # feature-cache bytes per image, from real output shapes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from voc_standin import make_voc_standin

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
STAGES = ("priors_kmeans", "priors_saliency_unsup", "priors_feature_kmeans", "eval_kmeans",
          "eval_linear_probe", "eval_retrieval", "loader_w0", "loader_w2", "train_w0", "train_w2", "predict")
VAL_FRACTION = 0.25
LOADER = """
import sys, time
from hydra.utils import instantiate
from omegaconf import OmegaConf
cfg = OmegaConf.load(sys.argv[1])
cfg.num_workers = int(sys.argv[2])
dm = instantiate(cfg, _convert_="all"); dm.setup("fit")
start, seen = time.perf_counter(), 0
for batch in dm.train_dataloader():
    seen += batch["image"].shape[0]
print("IMAGES", seen, time.perf_counter() - start)
"""


def _data(voc: Path) -> list[str]:
    return ["data=voc", f"data.root={voc}", f"data.val_fraction={VAL_FRACTION}"]


def _commands(stage: str, n: int, work: Path, voc: Path, weights: Path) -> tuple[list[str], int]:
    """(command, images it processes) of ``stage`` at ``n`` images."""
    run = [f"hydra.run.dir={work}/runs/{stage}", f"paths.priors_dir={work}/priors", "progress=false"]
    train_n = n - round(n * VAL_FRACTION)  # the seeded val carve-out of data=voc (usgs.data.splits)
    frozen = ["model=frozen_backbone", "model.backbone.name=resnet18", f"model.backbone.weights={weights}",
              "device=cpu", "data.num_workers=0", "feature_cache=true",
              f"paths.features_dir={work}/features_{stage}"]  # per stage: each pays its first network pass
    if stage.startswith("priors_"):
        prior = stage.removeprefix("priors_")
        extra = {"kmeans": [], "saliency_unsup": ["prior.workers=1"],
                 "feature_kmeans": ["prior.backbone.name=resnet18", f"prior.backbone.weights={weights}"]}[prior]
        return [PY, "make_priors.py", *_data(voc), f"prior={prior}", *extra, *run], train_n
    if stage.startswith("eval_"):
        task = stage.removeprefix("eval_")
        extra = {"kmeans": ["task.pixels_per_image=100", "task.seeds=[0]"],
                 "linear_probe": ["task.pixels_per_image=100", "task.layer=embedding"],
                 "retrieval": ["task.segments=oracle"]}[task]
        images = n - train_n if task == "kmeans" else n  # k-means is fitted on the evaluated split only
        return [PY, "evaluate.py", *_data(voc), *frozen, f"task={task}", "split=val", *extra, *run], images
    if stage.startswith("loader_"):
        cfg = work / "loader.yaml"
        subprocess.run([PY, "-c", _DUMP, str(cfg), *_data(voc), "data.batch_size=8",
                        "data.train_transform.crop_size=224"], cwd=ROOT, check=True)
        return [PY, "-c", LOADER, str(cfg), stage[-1]], train_n
    if stage.startswith("train_"):
        return [PY, "train.py", "experiment=supervised", *_data(voc), f"data.num_workers={stage[-1]}",
                "data.batch_size=8", "data.train_transform.crop_size=224", "trainer=cpu", "trainer.max_epochs=1",
                "trainer.limit_val_batches=0", "test=false", "logger=csv",
                *run[:1]], train_n
    if stage == "predict":
        ckpt = work / "runs" / "train_w2" / "checkpoints" / "last.ckpt"
        return [PY, "predict.py", f"ckpt_path={ckpt}", f"input={voc}/JPEGImages", f"output={work}/predictions",
                "overlays=false", "device=cpu", *run], n + 20
    raise ValueError(f"unknown stage {stage!r}; valid: {STAGES}")


_DUMP = """
import os, sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
with initialize_config_dir(config_dir=os.getcwd() + "/conf", version_base="1.3"):
    cfg = compose("train", overrides=sys.argv[2:])
OmegaConf.save(cfg.data, sys.argv[1], resolve=True)
"""


def run_stage(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB of the process, its output tail); raises on a failed command."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{output[-3000:]}")
    return wall, usage.ru_maxrss / 1024, output[-2000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="*", default=[250, 1000])
    parser.add_argument("--stages", nargs="*", default=list(STAGES), choices=STAGES)
    parser.add_argument("--work", type=Path, default=ROOT / "cache" / "bench_scale")
    parser.add_argument("--force", action="store_true", help="rerun stages that have a result")
    parser.add_argument("--table", action="store_true", help="print the table of results.jsonl and stop")
    parser.add_argument("--disk", action="store_true", help="print feature-cache sizes per image and stop")
    args = parser.parse_args()
    results = args.work / "results.jsonl"
    if args.table:
        print(table(results))
        return
    if args.disk:
        print(disk_table())
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled",
           "NO_ALBUMENTATIONS_UPDATE": "1", "HYDRA_FULL_ERROR": "1"}
    for n in args.n:
        work = args.work / f"n{n}"
        voc = make_voc_standin(work / "data", n)
        weights = _resnet18_weights(args.work)
        done = _done(results)
        for stage in args.stages:
            if (n, stage) in done and not args.force:
                continue
            command, images = _commands(stage, n, work, voc, weights)
            wall, rss, output = run_stage(command, env)
            row = {"n": n, "stage": stage, "images": images, "wall_s": round(wall, 2),
                   "s_per_image": round(wall / images, 4), "peak_rss_mib": round(rss, 1),
                   "loadavg": os.getloadavg()[0], "command": " ".join(command[1:])}
            if stage.startswith("loader_"):
                seen, seconds = output.split("IMAGES")[-1].split()[:2]
                row["loader_images_per_s"] = round(int(seen) / float(seconds), 2)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


COCOSTUFF27_IMAGES = {"curated train": 49_629, "curated val (test)": 2_175}  # the IIC curated lists


def disk_table(size: int = 320) -> str:
    """Float16 feature-cache bytes per image at ``size`` x ``size`` (COCO-Stuff-27's evaluation crop),
    from the output shape of each backbone on a real forward pass; COCO-Stuff-27's totals."""
    import torch

    from usgs.nets.backbones import backbone

    shapes = {}
    with torch.no_grad():
        for name in ("vit_small_patch8", "vit_base_patch14_dinov2", "resnet18", "efficientnet_lite0"):
            net = backbone(name).eval()
            shapes[name] = tuple(net(torch.zeros(1, 3, size, size))[net.out_key].shape[1:])
    total = sum(COCOSTUFF27_IMAGES.values())
    lines = [f"| backbone | features at {size} px | KiB / image | COCO-Stuff-27 train + test ({total:,} images) |",
             "|---|---|---|---|"]
    for name, (c, h, w) in shapes.items():
        per = c * h * w * 2
        lines.append(f"| {name} | {c} x {h} x {w} | {per / 1024:.0f} | {per * total / 2**30:.1f} GiB |")
    return "\n".join(lines)


def _resnet18_weights(work: Path) -> Path:
    path = work / "resnet18_random.pth"
    if not path.is_file():
        import torch

        from usgs.nets.backbones import backbone

        work.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(backbone("resnet18").state_dict(), path)
    return path


def _done(results: Path) -> set[tuple[int, str]]:
    if not results.is_file():
        return set()
    return {(r["n"], r["stage"]) for r in map(json.loads, results.read_text().splitlines())}


def table(results: Path) -> str:
    """Markdown table: per stage, s/image and peak RSS at every N, and the largest / smallest s/image ratio."""
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    last = {(r["n"], r["stage"]): r for r in rows}  # a rerun (--force) replaces the earlier line
    ns = sorted({n for n, _ in last})
    head = "| stage | " + " | ".join(f"N={n} s/img | N={n} RSS MiB" for n in ns) + " | s/img, largest / smallest N |"
    lines = [head, "|" + "---|" * (2 * len(ns) + 2)]
    for stage in STAGES:
        cells, per = [], []
        for n in ns:
            r = last.get((n, stage))
            extra = f" ({r['loader_images_per_s']} img/s)" if r and "loader_images_per_s" in r else ""
            cells += [f"{r['s_per_image']:.4f}{extra}" if r else "-", f"{r['peak_rss_mib']:.0f}" if r else "-"]
            if r:
                per.append(r["s_per_image"])
        if per:
            # below 1: the fixed start-up (interpreter, config, network) spread over more images
            ratio = f"{per[-1] / per[0]:.2f}" if len(per) > 1 else "-"
            lines.append(f"| {stage} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
