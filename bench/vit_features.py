"""Throughput of dense ViT feature extraction (the frozen-feature baselines' cost), images per second.

    OMP_NUM_THREADS=1 .venv/bin/python bench/vit_features.py --sizes 224 320 --batch 8 --threads 1

Random weights (speed does not depend on them) and random images; eval mode, no grad, float32,
``usgs.nets.vit.vit(name)`` forward returning the ``[B,C,H/p,W/p]`` patch map. Reports the median of
``--repeats`` timed batches after one warm-up batch. Runs on the GPU with ``--device cuda``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from usgs.nets.vit import VIT_SPECS, vit


def images_per_second(name: str, size: int, batch: int, repeats: int, device: torch.device) -> float:
    net = vit(name).eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first batch warms up allocators and kernels
                times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16", choices=sorted(VIT_SPECS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print("| model | size | batch | threads | device | images/s |\n|---|---|---|---|---|---|")
    for size in args.sizes:
        rate = images_per_second(args.model, size, args.batch, args.repeats, device)
        print(f"| {args.model} | {size} | {args.batch} | {args.threads} | {device} | {rate:.1f} |")


if __name__ == "__main__":
    main()
