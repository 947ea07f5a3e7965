"""Results of the evaluation protocols: seed statistics, markdown tables, per-class IoU, overlays."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from usgs.atomic import atomic_write
from usgs.callbacks import color_palette, overlay_panel
from usgs.data.transforms import denormalize

IGNORE_INDEX = 255
# refine(image uint8 [H,W,3], probs float [C,H,W]) -> refined probs [C,H,W] (e.g. the dense CRF).
Refine = Callable[..., np.ndarray]


def mask_predictions(probs: Tensor, batch: dict[str, Any], refine: Refine | None = None) -> Tensor:
    """Class / cluster ids [B,H,W] from probabilities [B,C,H,W], optionally refined per image first."""
    if refine is None:
        return probs.argmax(dim=1)
    images = denormalize(batch["image"]).numpy()
    refined = [torch.from_numpy(refine(img, p.numpy())) for img, p in zip(images, probs.float())]
    return torch.stack(refined).argmax(dim=1)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or np.isnan(arr).all():
        return math.nan, math.nan
    # Population std (ddof 0): the spread of the seeds that were run, defined for a single seed too.
    return float(np.nanmean(arr)), float(np.nanstd(arr))


class TaskResult:
    """Scores of one task, per variant (e.g. "prototypes", "pixels"), over seeds.

    ``scores[variant]`` holds per-seed ``miou``/``pixel_accuracy``, their mean/std, per-class IoU
    (mean over seeds, NaN for classes absent from prediction and GT) and the first seed's
    prediction -> class mapping, used to colour the overlays of that seed's examples.
    """

    def __init__(self, task: str, class_names: Sequence[str], max_examples: int = 8) -> None:
        self.task = task
        self.class_names = list(class_names)
        self.max_examples = max_examples
        self.scores: dict[str, dict[str, Any]] = {}
        self.examples: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}

    def add_scores(self, variant: str, per_seed: Sequence[dict[str, Tensor]]) -> None:
        miou = [float(s["miou"]) for s in per_seed]
        acc = [float(s["pixel_accuracy"]) for s in per_seed]
        iou = torch.stack([s["iou"].double() for s in per_seed]).numpy()
        with warnings.catch_warnings():  # all-NaN columns (class never seen) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            iou_mean = [float(v) for v in np.nanmean(iou, axis=0)]
        self.scores[variant] = {
            "miou": miou, "pixel_accuracy": acc, "miou_mean_std": _mean_std(miou),
            "pixel_accuracy_mean_std": _mean_std(acc), "iou": iou_mean, "mapping": per_seed[0]["mapping"],
        }

    def add_examples(self, variant: str, batch: dict[str, Any], pred: Tensor) -> None:
        store = self.examples.setdefault(variant, [])
        for image, mask, p in zip(batch["image"], batch["mask"], pred):
            if len(store) >= self.max_examples:
                return
            store.append((image.cpu(), mask.cpu(), p.cpu()))

    def flat(self) -> dict[str, float]:
        """``<task>/<variant>/{miou,miou_std,pixel_accuracy,pixel_accuracy_std,iou/<class>}`` floats."""
        out: dict[str, float] = {}
        for variant, s in self.scores.items():
            key = f"{self.task}/{variant}"
            out[f"{key}/miou"], out[f"{key}/miou_std"] = s["miou_mean_std"]
            out[f"{key}/pixel_accuracy"], out[f"{key}/pixel_accuracy_std"] = s["pixel_accuracy_mean_std"]
            out[f"{key}/num_seeds"] = float(len(s["miou"]))
            for name, value in zip(self.class_names, s["iou"], strict=True):
                out[f"{key}/iou/{name}"] = value
        return out


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def markdown_table(results: Sequence[TaskResult]) -> str:
    """Summary table (mIoU and pixel accuracy, % mean ± std over seeds) and per-class IoU tables."""
    lines = ["| task | variant | seeds | mIoU (%) | pixel acc. (%) |", "|---|---|---|---|---|"]
    per_class: list[str] = []
    for r in results:
        per_class += ["", f"Per-class IoU (%) of {r.task}, mean over seeds:", "",
                      "| variant | " + " | ".join(r.class_names) + " |", "|---|" + "---|" * len(r.class_names)]
        for variant, s in r.scores.items():
            (m, ms), (a, as_) = s["miou_mean_std"], s["pixel_accuracy_mean_std"]
            lines.append(f"| {r.task} | {variant} | {len(s['miou'])} | {_pct(m)} ± {_pct(ms)} "
                         f"| {_pct(a)} ± {_pct(as_)} |")
            per_class.append(f"| {variant} | " + " | ".join(_pct(v) for v in s["iou"]) + " |")
    return "\n".join(lines + per_class) + "\n"


def mapped(pred: Tensor, mapping: Tensor) -> Tensor:
    """Prediction ids -> class ids through a metric mapping; unmatched ids (-1) -> ignore (255)."""
    lut = torch.where(mapping >= 0, mapping, torch.full_like(mapping, IGNORE_INDEX))
    return lut.to(pred.device)[pred.long()]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write(path, data.tobytes())


def save_overlays(results: Sequence[TaskResult], out_dir: str | Path, palette: np.ndarray | None,
                  num_classes: int) -> list[Path]:
    """One PNG per task variant: rows of image | GT | (matched) prediction, written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = color_palette(num_classes, palette)
    written = []
    for r in results:
        for variant, examples in r.examples.items():
            if not examples:
                continue
            mapping = r.scores.get(variant, {}).get("mapping")
            rows = [overlay_panel(img, mask, mapped(p, mapping) if mapping is not None else p, colours)
                    for img, mask, p in examples]
            path = out / f"{r.task}_{variant}.png"
            _write_png(path, np.concatenate(rows, axis=0))
            written.append(path)
    return written

