"""A picture of STEGO's test predictions: image | ground truth | cluster probe | + CRF | linear probe.

    python bench/stego_figure.py <run>/checkpoints/last.ckpt --out docs/stego_predictions.png --images 5

The cluster ids are mapped to classes by the Hungarian matching over the whole test split (as the
scores are); the CRF is STEGO's (the checkpoint's ``model.crf``). Evaluation as in the test step:
the run's eval transform, flip-averaged code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's usgs

import torch
from hydra.utils import instantiate

from usgs.metrics import SegmentationMetric
from usgs.run.checkpoints import load_checkpoint
from usgs.visualize import color_palette, colorize, draw_panel, image_rgb, legend_entries, write_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/stego_predictions.png"))
    parser.add_argument("--images", type=int, default=5)
    args = parser.parse_args()
    cfg, model = load_checkpoint(args.checkpoint)
    model.eval()
    datamodule = instantiate(cfg.data, _convert_="all")
    dataset = datamodule.dataset("test")
    k = model.cluster_probe.clusters.shape[0]
    metric = SegmentationMetric(model.num_classes, k, "hungarian")
    shown = []
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = dataset[i]
            image, mask = sample["image"].unsqueeze(0), sample["mask"].unsqueeze(0)
            code = model.code(image)
            cluster = model.cluster_probe.log_probs(code, model.eval_alpha).softmax(1)
            metric.update(cluster.argmax(1), mask)
            if len(shown) < args.images:
                linear = model.linear_probe(code).softmax(1)
                rgb = image_rgb(image[0])
                crf = torch.from_numpy(model.crf(rgb, cluster[0].numpy()).argmax(0)) if model.crf else cluster[0].argmax(0)
                shown.append((rgb, mask[0], cluster[0].argmax(0), crf, linear[0].argmax(0)))
    mapping = metric.compute()["mapping"]
    palette = color_palette(model.num_classes, datamodule.palette)
    lookup = torch.cat([mapping.clamp(min=0), torch.tensor([255])])
    rows = [[rgb, colorize(m, palette), colorize(lookup[c], palette), colorize(lookup[r], palette),
             colorize(lin, palette)] for rgb, m, c, r, lin in shown]
    panel = draw_panel(rows, ["image", "ground truth", "STEGO cluster", "cluster + CRF", "linear probe"],
                       legend_entries(palette, datamodule.class_names), label_columns=(1, 2, 3, 4))
    write_png(args.out, panel)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
