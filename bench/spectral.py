"""Cost of ClusterNet's spectral-clustering layer at the thesis input (713x713 crops -> 90x90 maps).

Times one training step (forward + backward) of PSPNet with and without the layer, and the layer's
own stages (channel distances, affinity + eigh, k-means, cluster means) on the layer4 features.

    .venv/bin/python bench/spectral.py                       # thesis setting: ResNet-50, 713, batch 1
    .venv/bin/python bench/spectral.py --size 97 --backbone resnet18 --reps 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from usgs.nets.kmeans import kmeans
from usgs.nets.pspnet import PSPNet
from usgs.nets.spectral import (
    SpectralClustering,
    ThresholdAffinity,
    canonical_labels,
    channel_distances,
    cluster_means,
    spectral_embedding,
)

T = TypeVar("T")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device, reps: int, warmup: int) -> tuple[float, T]:
    """Median wall time (s) of ``reps`` (>= 1) calls after ``warmup`` calls, and the last result."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def train_step_time(net: PSPNet, image: torch.Tensor, reps: int, warmup: int) -> dict[str, float]:
    """Median forward and backward time of a training step (main + aux logits summed as the loss).

    Forward and backward are timed inside the same step, so a repetition costs one step (a
    ResNet-50 step at 713x713 takes about a minute on one CPU core).
    """
    device = image.device
    forward, backward = [], []
    for _ in range(warmup + reps):
        net.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        out = net(image)
        loss = sum(o.mean() for o in out.values())
        sync(device)
        middle = time.perf_counter()
        loss.backward()
        sync(device)
        forward.append(middle - start)
        backward.append(time.perf_counter() - middle)
    fwd = sorted(forward[warmup:])[reps // 2]
    bwd = sorted(backward[warmup:])[reps // 2]
    return {"forward_s": fwd, "backward_s": bwd, "step_s": fwd + bwd}


def layer_stage_times(
    layer: SpectralClustering, feats: torch.Tensor, reps: int, warmup: int
) -> dict[str, float]:
    """The layer's stages on layer4 features [B,C,h,w]."""
    device = feats.device
    t_dist, dist = timed(lambda: channel_distances(feats), device, reps, warmup)
    t_eig, emb = timed(
        lambda: spectral_embedding(layer.affinity(dist), layer.num_eigenvectors),
        device,
        reps,
        warmup,
    )

    def cluster() -> torch.Tensor:
        gen = torch.Generator().manual_seed(layer.seed)
        res = kmeans(emb, layer.num_clusters, iters=layer.kmeans_iters, generator=gen)
        return canonical_labels(res.labels, layer.num_clusters)

    t_km, labels = timed(cluster, device, reps, warmup)
    x = feats.detach().requires_grad_(True)
    t_mean, _ = timed(lambda: cluster_means(x, labels, layer.num_clusters), device, reps, warmup)

    def mean_backward() -> None:
        x.grad = None
        cluster_means(x, labels, layer.num_clusters).sum().backward()

    t_mean_bwd, _ = timed(mean_backward, device, reps, warmup)
    return {
        "distances_s": t_dist,
        "affinity_eigh_s": t_eig,
        "kmeans_s": t_km,
        "means_forward_s": t_mean,
        "means_forward_backward_s": t_mean_bwd,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--size", type=int, default=713, help="square crop size (thesis: 713)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet50", "resnet101"])
    parser.add_argument("--clusters", type=int, default=40)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    image = torch.randn(args.batch, 3, args.size, args.size, device=device)
    spectral = SpectralClustering(num_clusters=args.clusters, affinity=ThresholdAffinity(1.0))
    report: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}}
    for name, layer in (("pspnet", None), ("clusternet", spectral)):
        net = PSPNet(args.classes, backbone=args.backbone, spectral=layer).to(device).train()
        report[name] = train_step_time(net, image, args.reps, args.warmup)
        if layer is not None:
            with torch.no_grad():
                feats = net.cluster[0](net.backbone(image)["layer4"])  # type: ignore[index]
            report["feature_shape"] = list(feats.shape)
            stages = layer_stage_times(layer, feats, args.reps, args.warmup)
            report["layer"] = stages
            layer_total = stages["distances_s"] + stages["affinity_eigh_s"] + stages["kmeans_s"]
            layer_total += stages["means_forward_backward_s"]
            report["layer_step_s"] = layer_total
            report["layer_share_of_step"] = layer_total / report[name]["step_s"]  # type: ignore[index]
            layer_fwd = layer_total - stages["means_forward_backward_s"] + stages["means_forward_s"]
            report["layer_forward_s"] = layer_fwd
            report["layer_share_of_forward"] = layer_fwd / report[name]["forward_s"]  # type: ignore[index]
        del net
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
