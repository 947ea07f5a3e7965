"""MaskContrast training throughput: fp32 vs bf16 autocast, contiguous vs channels_last.

The paper's network (Van Gansbeke et al., ICCV 2021): DeepLabV3 on a ResNet-50 dilated to output
stride 8, 224 px crops, query + momentum key encoder. Each setting runs ``--warmup`` untimed steps,
then ``--steps`` timed steps of the real ``MaskContrast.training_step`` (both views, EMA update,
prototype queue, contrastive + saliency loss) with SGD, on random images and saliency masks (the
data loader is not timed: bench/gpu_results.sh times the real-data runs).

    python bench/throughput.py                                   # GPU: batch 32, 224 px, all 4 settings
    python bench/throughput.py --device cpu --steps 2 --batch 2 --crop 64 --backbone resnet18   # smoke
    python bench/throughput.py --device cpu --method deeplab --backbone efficientnet_lite0 --batch 4 \
        --precision fp32 --channels-last off     # plain DeepLabV3 forward + backward (cross-entropy)

``--method deeplab`` times one DeepLabV3 (OS 8, 256-channel ASPP head, 8 classes) forward + cross-entropy
backward + SGD step on random images and labels, without MaskContrast's key encoder.

Writes a markdown table and a JSON file (``--out``, default logs/throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from usgs.atomic import atomic_write  # noqa: E402
from usgs.methods.maskcontrast import MaskContrast  # noqa: E402
from usgs.methods.maskcontrast_transforms import PhotometricAugment  # noqa: E402
from usgs.methods.twin_views import SECOND_VIEW_SUFFIX  # noqa: E402
from usgs.nets.deeplab import DeepLabV3  # noqa: E402


def build_model(backbone: str) -> MaskContrast:
    """conf/model/maskcontrast.yaml's network and loss settings (32-d embedding, OS 8, queue 256)."""
    net = DeepLabV3(num_classes=32, backbone=backbone, output_stride=8, aspp_rates=[12, 24, 36],
                    head_channels=256, dropout=0.5)
    return MaskContrast(net, num_classes=8, queue_size=256, momentum=0.999, augment=PhotometricAugment())


class DeepLabStep(torch.nn.Module):
    """``--method deeplab``: DeepLabV3 OS 8 (8 classes) with a cross-entropy ``training_step``."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        self.net = DeepLabV3(num_classes=8, backbone=backbone, output_stride=8, aspp_rates=[12, 24, 36])

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.parameters())}]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.net(batch["image"]), batch["saliency"])


def random_batch(batch: int, crop: int, device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Two views with a salient square each (every image gives a prototype)."""
    image = torch.rand(batch, 3, crop, crop, generator=generator).to(device)
    key = torch.rand(batch, 3, crop, crop, generator=generator).to(device)
    saliency = torch.zeros(batch, crop, crop, dtype=torch.long)
    saliency[:, crop // 4: 3 * crop // 4, crop // 4: 3 * crop // 4] = 1
    saliency = saliency.to(device)
    return {"image": image, "saliency": saliency, "image" + SECOND_VIEW_SUFFIX: key,
            "saliency" + SECOND_VIEW_SUFFIX: saliency.clone()}


def measure(backbone: str, batch: int, crop: int, steps: int, warmup: int, device: torch.device,
            precision: str, channels_last: bool, seed: int = 0,
            method: str = "maskcontrast") -> dict[str, float | str | bool]:
    """Timed training steps of one setting -> steps/s, images/s and the last loss."""
    torch.manual_seed(seed)
    model = (build_model(backbone) if method == "maskcontrast" else DeepLabStep(backbone)).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    model.train()
    optimizer = torch.optim.SGD(model.param_groups()[0]["params"], lr=0.004, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    data = random_batch(batch, crop, device, generator)
    data = {k: v.contiguous(memory_format=fmt) if v.dim() == 4 else v for k, v in data.items()}
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else nullcontext())

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model.training_step(data, 0)
        loss.backward()
        optimizer.step()
        return float(loss.detach())  # synchronises the device

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    loss = 0.0
    for _ in range(steps):
        loss = step()
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"precision": precision, "channels_last": channels_last, "steps_per_s": steps / seconds,
            "images_per_s": steps * batch / seconds, "peak_gib": memory, "last_loss": loss}


def table(rows: list[dict], args: argparse.Namespace, device_name: str) -> str:
    what = "MaskContrast training" if args.method == "maskcontrast" else "DeepLabV3 forward + backward"
    lines = [f"{what} throughput: DeepLabV3 {args.backbone} OS 8, {args.crop} px crops, "
             f"batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up, on {device_name}", "",
             "| precision | channels_last | steps/s | images/s | peak GPU GiB | last loss |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['precision']} | {'on' if r['channels_last'] else 'off'} | {r['steps_per_s']:.2f} | "
              f"{r['images_per_s']:.1f} | {r['peak_gib']:.1f} | {r['last_loss']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    # training_step logs through self.log; there is no Trainer here to receive it.
    warnings.filterwarnings("ignore", message=".*self.log.*")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet50", help="paper: resnet50 (any usgs.nets.backbones name)")
    parser.add_argument("--method", default="maskcontrast", choices=["maskcontrast", "deeplab"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--crop", type=int, default=224, help="paper: 224 px crops")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--channels-last", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--out", default=os.environ.get("THROUGHPUT_OUT", "logs/throughput"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (TF32 would blur the comparison)
        torch.backends.cudnn.allow_tf32 = False
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({torch.get_num_threads()} threads)"
    rows = []
    for precision in args.precision:
        for layout in args.channels_last:
            row = measure(args.backbone, args.batch, args.crop, args.steps, args.warmup, device, precision,
                          layout == "on", method=args.method)
            print(f"{precision:5s} channels_last={layout:3s} {row['steps_per_s']:.2f} steps/s "
                  f"{row['images_per_s']:.1f} images/s", flush=True)
            rows.append(row)
    out = Path(args.out)
    text = table(rows, args, device_name)
    atomic_write(out / "throughput.md", text)
    atomic_write(out / "throughput.json", json.dumps({"device": device_name, **vars(args), "rows": rows}, indent=2))
    print(text)
    return rows


if __name__ == "__main__":
    main()
