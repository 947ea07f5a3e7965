"""Learning rates of the experiment files, chosen on val only (issue 13, "defaults chosen in the open").

Every ``lr`` of ``SWEEPS[experiment]`` is trained for each seed at the experiment's own budget with
``test=false`` (the test split is not looked at) and scored on the **val** split:

- methods that learn from labels: ``val/miou_best`` of train.py, the val score of the ``best.ckpt``
  that val chooses;
- label-free methods (MaskContrast): evaluate.py ``task=kmeans split=val`` on ``last.ckpt``, the
  checkpoint they report (k-means prototypes, Hungarian matching). Choosing a hyperparameter on val
  is the protocol's; no label reaches training or checkpoint choice.

The rule that picks the default: the lr with the best mean replaces the experiment's current value only
when its mean is higher by more than the larger of the two population stds; otherwise the current
value stays (a difference inside the seed spread is not evidence). Finished runs are read back, not
redone: an interrupted sweep resumes.

    OMP_NUM_THREADS=1 python bench/lr_sweep.py classifier_stanford --seeds 0 1
    python bench/lr_sweep.py clusternet_stanford --lrs 0.3 1.0        # extend a grid

Run directories ``<out>/<experiment>_lr<lr>_s<seed>``; writes ``<out>/<experiment>.{json,md}``.
``--start random`` sweeps the experiment's network from random init (budget_curves.STARTS; out:
``logs/lr_sweep_random``); the rule then compares with the file's (ImageNet-start) lr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_curves import (  # noqa: E402
    COMMON,
    ROOT,
    STARTS,
    cam_pseudo_labels,
    run_once,
    saliency_unsup_train,
    start_overrides,
)

Prepare = Callable[[Path, str], list[str]]


@dataclass(frozen=True)
class Sweep:
    """The grid of one experiment and how a run is scored on val (``val`` or ``kmeans``)."""

    lrs: tuple[float, ...]
    score: str = "val"
    prepare: Prepare | None = field(default=None)  # runs once first; returns extra train overrides


def pseudo_label_prior(out: Path, start: str) -> list[str]:
    """The weak DeepLab learns from the pseudo labels of budget_curves.cam_pseudo_labels (seed-0
    classifier from the same start at its lr, chosen by its own sweep first)."""
    return [f"data.prior={cam_pseudo_labels(out, start)['pseudo_labels']}"]


def saliency_unsup_cache(out: Path, start: str) -> list[str]:
    """MaskContrast-Stanford's label-free saliency (``python make_priors.py prior=saliency_unsup``)."""
    saliency_unsup_train(out)
    return []


SWEEPS: dict[str, Sweep] = {
    "clusternet_stanford": Sweep((0.003, 0.01, 0.03, 0.1, 0.3, 1.0)),
    "pspnet_stanford": Sweep((0.003, 0.01, 0.03, 0.1)),
    "classifier_stanford": Sweep((0.02, 0.05, 0.1, 0.2, 0.4)),
    "single_stage_stanford": Sweep((0.02, 0.05, 0.1, 0.2)),
    "single_stage": Sweep((0.003, 0.01, 0.03)),
    "weak_deeplab_stanford": Sweep((0.005, 0.01, 0.02, 0.05, 0.1), prepare=pseudo_label_prior),
    "saliency_weizmann": Sweep((0.003, 0.01, 0.03, 0.1, 0.3)),
    "maskcontrast": Sweep((0.005, 0.01, 0.02, 0.05, 0.1), score="kmeans"),
    # from the ImageNet start with frozen_stages 3 (the experiment's); 0.8 with --set model.frozen_stages=0 is
    # the former from-scratch default (its own --out)
    "maskcontrast_stanford": Sweep((0.004, 0.04, 0.8), score="kmeans", prepare=saliency_unsup_cache),
}


def current_lr(experiment: str) -> float:
    """The lr the experiment file sets now (``model.optimizer.lr``, composed as train.py does)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    return float(OmegaConf.select(cfg, "model.optimizer.lr"))


def score_run(experiment: str, sweep: Sweep, lr: float, seed: int, out: Path, extra: Sequence[str]) -> float:
    run_dir = out / f"{experiment}_lr{lr:g}_s{seed}"
    metrics = run_once(["train.py", f"experiment={experiment}", *extra, f"model.optimizer.lr={lr}", f"seed={seed}",
                        "test=false", *COMMON], run_dir, "metrics.json")
    if sweep.score == "val":
        return float(metrics["val/miou_best"])
    result = run_once(["evaluate.py", "task=kmeans", "split=val", f"ckpt_path={run_dir}/checkpoints/last.ckpt",
                       "progress=false"], run_dir / "kmeans_val", "metrics.json")
    return float(result["kmeans/prototypes/miou"])


def choose(results: dict[str, list[float]], default: float) -> float:
    """The best-mean lr if it beats ``default`` by more than the larger population std, else ``default``
    (the best if ``default`` was not measured)."""
    means = {float(lr): np.mean(v) for lr, v in results.items() if v}
    best = max(means, key=means.__getitem__)
    if default not in means or best == default:
        return best
    margin = max(np.std(results[f"{best:g}"]), np.std(results[f"{default:g}"]))
    return best if means[best] - means[default] > margin else default


def report(experiment: str, sweep: Sweep, results: dict[str, list[float]], default: float) -> str:
    chosen = choose(results, default)
    metric = "val k-means mIoU (%), last.ckpt" if sweep.score == "kmeans" else "val mIoU (%), best.ckpt"
    lines = [f"| {experiment} lr | {metric} | seeds |", "|---|---|---|"]
    for lr, values in sorted(results.items(), key=lambda kv: float(kv[0])):
        mark = (" (current default)" if float(lr) == default else "") + (" **chosen**" if float(lr) == chosen else "")
        lines.append(f"| {lr}{mark} | {100 * np.mean(values):.1f} ± {100 * np.std(values):.1f} | {len(values)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(SWEEPS))
    parser.add_argument("--lrs", type=float, nargs="+", help="default: the experiment's grid in SWEEPS")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, help="default: logs/lr_sweep, logs/lr_sweep_<start> for another start")
    parser.add_argument("--default", type=float, help="the value the rule compares with (default: the file's)")
    parser.add_argument("--start", choices=sorted(STARTS), default="imagenet", help="where the networks start")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of every run besides the lr (e.g. model.frozen_stages=3); give its own --out")
    args = parser.parse_args(argv)
    args.out = args.out or ROOT / "logs" / ("lr_sweep" if args.start == "imagenet" else f"lr_sweep_{args.start}")
    sweep = SWEEPS[args.experiment]
    # the start's backbone and weights (its lr is the one swept: model.optimizer.lr comes after)
    extra = [*(sweep.prepare(args.out, args.start) if sweep.prepare else []),
             *start_overrides(args.start, [f"experiment={args.experiment}"]), *args.set]
    saved = args.out / f"{args.experiment}.json"
    results: dict[str, list[float]] = json.loads(saved.read_text())["results"] if saved.is_file() else {}
    lrs = args.lrs or sweep.lrs
    scores: dict[float, list[float]] = {lr: [] for lr in lrs}
    for seed in args.seeds:  # seed-major: a sweep stopped early still has every lr at the first seed
        for lr in lrs:
            scores[lr].append(score_run(args.experiment, sweep, lr, seed, args.out, extra))
    results.update({f"{lr:g}": values for lr, values in scores.items()})
    default = args.default if args.default is not None else current_lr(args.experiment)
    text = report(args.experiment, sweep, results, default)
    saved.write_text(json.dumps({"experiment": args.experiment, "score": sweep.score, "seeds": args.seeds,
                                 "default": default, "chosen": choose(results, default), "results": results},
                                indent=2))
    (args.out / f"{args.experiment}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
