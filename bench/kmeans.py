"""k-means at evaluation scale: the suite's torch k-means vs scikit-learn MiniBatchKMeans.

MaskContrast's released evaluation clusters pixel embeddings with scikit-learn's MiniBatchKMeans.
Here: ``usgs.evaluation.clustering.kmeans_large`` (best of 4 k-means++ / Lloyd runs on a 20k
subsample, then 3 full-data Lloyd passes, with the torch k-means of usgs.nets.kmeans) against
MiniBatchKMeans (defaults, n_init=1) on the same float32 points: a mixture of ``k`` Gaussians in
``dim`` dimensions (unit-variance centres, noise std 0.5, Dirichlet(2) weights). Both inertias are
computed by the same float64 function over all points; times include everything each method does.

    .venv/bin/python bench/kmeans.py                       # 10M x 32-d, k = 21 (VOC classes)
    .venv/bin/python bench/kmeans.py --n 1000000           # a smaller run
    .venv/bin/python bench/kmeans.py --device cuda         # GPU (when there is one)

Prints one JSON object: seconds, inertia and their ratios, per method and seed.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from usgs.evaluation.clustering import kmeans_large


def mixture(n: int, dim: int, k: int, seed: int) -> torch.Tensor:
    """n float32 points from k Gaussians (weights ~ Dirichlet(2)), generated in chunks to bound memory."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=gen)
    weights = torch.distributions.Dirichlet(torch.full((k,), 2.0)).sample()
    out = torch.empty(n, dim)
    for start in range(0, n, 1_000_000):
        stop = min(n, start + 1_000_000)
        comp = torch.multinomial(weights, stop - start, replacement=True, generator=gen)
        out[start:stop] = centres[comp] + 0.5 * torch.randn(stop - start, dim, generator=gen)
    return out


def inertia(x: torch.Tensor, centres: torch.Tensor, chunk: int = 1_000_000) -> float:
    """Sum of squared distances to the nearest centre, float64, chunked."""
    c = centres.to(x.device, torch.float64)
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        total += float(torch.cdist(x[start:start + chunk].double(), c).min(1).values.pow(2).sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--k", type=int, default=21)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-sklearn", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    x = mixture(args.n, args.dim, args.k, seed=1234)
    xd = x.to(args.device)
    rows = []
    for seed in args.seeds:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = kmeans_large(xd, args.k, seed=seed)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        row = {"seed": seed, "torch_s": time.perf_counter() - t0, "torch_inertia": inertia(xd, res.centers)}
        if not args.skip_sklearn:
            with threadpool_limits(args.threads):
                t0 = time.perf_counter()
                mbk = MiniBatchKMeans(n_clusters=args.k, n_init=1, random_state=seed).fit(x.numpy())
                row["sklearn_s"] = time.perf_counter() - t0
            row["sklearn_inertia"] = inertia(x, torch.from_numpy(np.asarray(mbk.cluster_centers_)))
            row["speedup"] = row["sklearn_s"] / row["torch_s"]
            row["inertia_ratio_torch_over_sklearn"] = row["torch_inertia"] / row["sklearn_inertia"]
        rows.append(row)
    print(json.dumps({"n": args.n, "dim": args.dim, "k": args.k, "device": args.device,
                      "threads": args.threads, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
