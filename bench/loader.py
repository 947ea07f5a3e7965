"""Data-loading throughput of Stanford Background at training resolution (images per second).

Reads, parses (.regions.txt), augments (random scale 0.5-2 + 224 crop + flip, the data=stanford
training transform) and collates batches through the real DataModule, for several ``num_workers``.
The first batch of every setting (worker start-up) is not timed. "per worker" divides by
max(1, num_workers): with 0 workers the main process does the work.

    .venv/bin/python bench/loader.py                                  # 0, 1, 2 workers, 160 images
    .venv/bin/python bench/loader.py --workers 0 --num-images 32      # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from usgs.data.stanford import StanfordDataModule
from usgs.data.transforms import TrainTransform

DEFAULT_ROOT = (
    Path(os.environ.get("USGS_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    / "stanford_background"
    / "iccv09Data"
)


def throughput(root: Path, workers: int, crop: int, batch_size: int, num_images: int) -> dict[str, float]:
    """Images/s of ``num_images`` training samples (after one untimed batch) with ``workers`` workers."""
    dm = StanfordDataModule(
        root=root,
        num_classes=8,
        batch_size=batch_size,
        num_workers=workers,
        train_transform=TrainTransform(crop_size=crop, scale=(0.5, 2.0), hflip=True),
    )
    loader = iter(dm.train_dataloader())
    next(loader)  # worker start-up and first files
    done, start = 0, time.perf_counter()
    while done < num_images:
        done += len(next(loader)["image"])
    seconds = time.perf_counter() - start
    per_second = done / seconds
    return {
        "num_workers": workers,
        "images": done,
        "seconds": round(seconds, 3),
        "images_per_s": round(per_second, 1),
        "images_per_s_per_worker": round(per_second / max(1, workers), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--num-images", type=int, default=160, help="timed images (< the 572 training images)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # each process decodes with one thread; workers add parallelism
    results = [throughput(args.root, w, args.crop, args.batch_size, args.num_images) for w in args.workers]
    for row in results:
        print(json.dumps(row))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as handle:
            json.dump(
                {"crop": args.crop, "batch_size": args.batch_size, "results": results}, handle, indent=2
            )
        os.replace(handle.name, args.out)


if __name__ == "__main__":
    main()
