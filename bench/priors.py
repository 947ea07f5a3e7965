"""Benchmark of the k-means priors on Stanford Background and of the saliency priors on Weizmann Horse.

k-means: `kmeans_seed` (OpenCV + scikit-learn, the seed recipe), then the batched torch `kmeans` on
the seed's features, then one feature change per row (``KMEANS_ROWS``), all on the Stanford
Background TEST split of ``data=stanford`` (143 images; the defaults were chosen on val by
bench/sweep_priors.py), timed in the SAME process (images decoded beforehand, so only the prior is
timed: per-image stage + global fit on the split's own images + relabel/morphology: unlike
``make_priors.py``, which fits the global clusters on train (``fit_split``), every row here is FIT ON
THE SCORED IMAGES, and says so), scored with the
shared metric: Hungarian mIoU with G = 8 clusters, majority-vote mIoU with G = 40. Mean +- std
(population std, numpy's default) over seeds.

Saliency: `saliency_unsup` (with and without self-training) vs `saliency_sup` (a small net trained
with train.py's supervised module on a disjoint part of Weizmann Horse, via --sup-checkpoint) against
the figure/ground masks of the TEST split of ``data=weizmann`` (the supervised net trains on train
and chooses on val).

    OMP_NUM_THREADS=1 python bench/priors.py kmeans --threads 1 --seeds 0 1 2
    OMP_NUM_THREADS=1 python bench/priors.py saliency --threads 1 --sup-checkpoint <run>/checkpoints/best.ckpt

One thread: on an oversubscribed shared CPU, torch with 2 threads ran the fast prior ~10x slower
(164-200 vs 15-19 ms per image, measured on 128 images) because its many small ops then wait on
thread synchronisation; OpenCV's k-means is timed with the same setting.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from usgs.data.stanford import StanfordDataModule
from usgs.data.weizmann import WeizmannDataModule
from usgs.priors.base import MaskPrior
from usgs.priors.kmeans import SeedKMeansPrior, TorchKMeansPrior
from usgs.priors.morphology import Morphology
from usgs.priors.report import markdown_table, saliency_scores, semantic_scores
from usgs.priors.saliency import SupervisedSaliencyPrior, UnsupervisedSaliencyPrior

DATA = Path(os.environ.get("USGS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def run_prior(
    prior: MaskPrior, images: Sequence[np.ndarray], states: list | None = None
) -> tuple[list[np.ndarray], float, list]:
    """All three phases on in-memory images; returns (maps, seconds, local states). ``states`` skips local."""
    start = time.perf_counter()
    if states is None:
        states = []
        for s in range(0, len(images), prior.batch_size):
            idx = list(range(s, min(len(images), s + prior.batch_size)))
            states += prior.local([images[i] for i in idx], idx)
    if prior.needs_fit:
        prior.fit(states, lambda i: images[i])
    maps = [prior.finalize(im, st) for im, st in zip(images, states, strict=True)]
    return maps, time.perf_counter() - start, states


class LocalOnly(MaskPrior):
    """Runs only the per-image stage of ``inner`` (finalize returns a blank map)."""

    def __init__(self, inner: MaskPrior) -> None:
        super().__init__(batch_size=inner.batch_size)
        self.inner = inner

    @property
    def num_labels(self) -> int:
        return self.inner.num_labels

    def local(self, images: Sequence[np.ndarray], indices: Sequence[int]) -> list:
        return self.inner.local(images, indices)

    def finalize_raw(self, image: np.ndarray, state: dict) -> np.ndarray:
        return np.zeros(image.shape[:2], np.uint8)


def _mean_std(values: Sequence[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


# Like for like (issue 13, item 6): first the torch k-means on the seed's own features (RGB, every
# pixel, no position: the implementation's speed), then one feature change per row (its effect on
# quality), cumulative, ending at the defaults of conf/prior/kmeans.yaml (chosen on val by
# bench/sweep_priors.py kmeans).
KMEANS_ROWS = (
    ("kmeans, seed features: RGB, every pixel, one image per problem", {"colour_space": "rgb", "xy_weight": 0.0, "samples_per_image": None}),
    ("+ 256 sampled pixels per image, 64 images per batched problem", {"colour_space": "rgb", "xy_weight": 0.0, "samples_per_image": 256}),
    ("+ HSV colour (cone)", {"colour_space": "hsv", "xy_weight": 0.0, "samples_per_image": 256}),
    ("+ position, xy_weight 0.5 (conf/prior/kmeans.yaml's features)", {"colour_space": "hsv", "xy_weight": 0.5, "samples_per_image": 256}),
    ("(previous default: Lab + position 0.5, 1024 samples)", {"colour_space": "lab", "xy_weight": 0.5, "samples_per_image": 1024}),
)  # fmt: skip


def bench_kmeans(args: argparse.Namespace) -> list[dict]:
    dm = StanfordDataModule(root=DATA / "stanford_background" / "iccv09Data", num_classes=8)
    dataset = dm.dataset(args.split, transform=None)
    raw = [dataset.load(i) for i in range(min(args.images, len(dataset)))]
    images, gts = [r["image"] for r in raw], [r["mask"] for r in raw]
    morph = Morphology(kernel=5)  # the seed's close + open with a 5x5 ellipse, for every row
    results: dict[str, dict[str, list[float]]] = {}
    rows = {"kmeans_seed (OpenCV + scikit-learn)": None, **dict(KMEANS_ROWS)}

    def add(name: str, key: str, value: float) -> None:
        results.setdefault(name, {}).setdefault(key, []).append(value)

    for seed in args.seeds:
        # the seed's per-image stage does not depend on G: run (and time) it once per seed
        _, local_seconds, states = run_prior(LocalOnly(SeedKMeansPrior(seed=seed)), images)
        for g, matching in ((8, "hungarian"), (40, "majority")):
            for name, kwargs in rows.items():
                if kwargs is None:
                    maps, seconds, _ = run_prior(
                        SeedKMeansPrior(k=g, seed=seed, postprocess=morph), images, states
                    )
                    seconds += local_seconds
                else:
                    prior = TorchKMeansPrior(
                        k=g, seed=seed, postprocess=morph, **{**kwargs, **json.loads(args.fast)}
                    )
                    maps, seconds, _ = run_prior(prior, images)
                add(name, f"G={g} ms/image", 1000 * seconds / len(images))
                add(name, f"G={g} mIoU ({matching})", 100 * semantic_scores(maps, gts, 8, g)[f"miou_{matching}"])  # percent
            print(
                seed,
                g,
                {n: round(r[f"G={g} mIoU ({matching})"][-1], 2) for n, r in results.items()},
                flush=True,
            )
    # every global fit here is on the scored images themselves (make_priors.py fits on train)
    table = [{"prior": f"{name}, fit on the scored images", **{k: _mean_std(v) for k, v in r.items()}}
             for name, r in results.items()]
    seed_ms = results["kmeans_seed (OpenCV + scikit-learn)"]["G=40 ms/image"]
    for row, r in zip(table, results.values(), strict=True):
        row["speed-up vs seed (G=40)"] = (
            f"{np.mean([s / f for s, f in zip(seed_ms, r['G=40 ms/image'])]):.1f}x"
        )
    return table


def bench_saliency(args: argparse.Namespace) -> list[dict]:
    dm = WeizmannDataModule(root=DATA / "weizmann_horse" / "weizmann_horse_db", num_classes=2)
    test = dm.dataset(args.split, transform=None)  # the supervised net never saw these (train / val)
    raw = [test.load(i) for i in range(min(args.images, len(test)))]
    images, gts = [r["image"] for r in raw], [r["saliency"] for r in raw]
    priors: dict[str, Callable[[], MaskPrior]] = {
        "saliency_unsup": lambda: UnsupervisedSaliencyPrior(),
        "saliency_unsup + self-training": lambda: UnsupervisedSaliencyPrior(self_train_steps=300),
    }
    if args.sup_checkpoint:
        from usgs.run.checkpoints import load_checkpoint

        model = load_checkpoint(args.sup_checkpoint)[1]
        priors["saliency_sup (trained on Weizmann train)"] = lambda: SupervisedSaliencyPrior(model, size=128)
    rows = []
    for name, make in priors.items():
        maps, seconds, _ = run_prior(make(), images)
        scores = saliency_scores(maps, gts)
        rows.append(
            {
                "prior": name,
                **scores,  # fractions: markdown_table shows them in percent
                "no proposal": sum(bool((m == 255).all()) for m in maps),
                "ms/image": 1000 * seconds / len(images),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["kmeans", "saliency"])
    parser.add_argument("--images", type=int, default=100_000, help="first N images (default: all)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: test")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenCV threads (see the docstring)")
    parser.add_argument("--fast", default="{}", help="JSON overrides of TorchKMeansPrior's defaults")
    parser.add_argument(
        "--sup-checkpoint", default=None, help="train.py checkpoint of experiment=saliency_weizmann"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the table here (Markdown)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    rows = bench_kmeans(args) if args.what == "kmeans" else bench_saliency(args)
    text = markdown_table(rows)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
