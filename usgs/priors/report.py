"""Quality report of a cached prior against the ground truth (``report.json`` + ``report.md``).

Semantic priors (cluster ids): mIoU and pixel accuracy with the suite's ``SegmentationMetric``,
Hungarian-matched (one cluster per class; the number to read when G = number of classes) and
majority-vote-matched (each cluster takes its most frequent class; the number to read when G >
classes), as in the seed work's evaluation.
All scores are fractions in [0, 1] (``report.json``), shown in percent in the Markdown tables.
Saliency priors (1 = foreground): foreground IoU, F-beta with beta^2 = 0.3 (Achanta et al. 2009,
the saliency literature's weighting of precision over recall) and MAE. IoU and F-beta come from the
dataset-level confusion matrix; MAE is the mean over images of the per-image mean absolute error.
Pixels the prior leaves at 255 (no proposal) count as background; ground-truth 255 is ignored.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from usgs.metrics import SegmentationMetric
from usgs.priors.cache import RawDataset, atomic_write
from usgs.visualize import color_palette, colorize, draw_panel, legend_entries

__all__ = ["MissingGroundTruthError", "semantic_scores", "saliency_scores", "score_prior_dir", "markdown_table",
           "write_report", "prior_panel", "is_score"]

IGNORE = 255
BETA2 = 0.3
# Score keys (fractions in JSON, percent in tables): miou, iou/<class>, pixel_accuracy, fbeta, ...
SCORE_KEY = re.compile(r"(^|[/_])(miou|iou|pixel_accuracy|fbeta|precision|recall|mae|coverage)($|[/_])")


def semantic_scores(
    preds: Iterable[np.ndarray], targets: Iterable[np.ndarray], num_classes: int, num_labels: int,
    class_ids: bool = False,
) -> dict[str, float]:
    """Hungarian (pixel counts and IoU) and majority mIoU / pixel accuracy (fractions in [0, 1]) of cluster maps vs class masks.

    ``class_ids``: the maps hold the dataset's class ids (pseudo labels), so they are also scored as
    they are, without matching (``miou_identity``), the score a network trained on them is held to.

    Prior pixels left at 255 (e.g. dropped small components) are excluded from the scores, and
    ``coverage`` (fraction of ground-truth-labelled pixels the prior labels) says how many that was.
    """
    # hungarian: one-to-one, most matched pixels; hungarian_iou: one-to-one, largest IoU sum (the
    # matching of MaskContrast's k-means protocol); majority: many-to-one.
    matchings = ("hungarian", "hungarian_iou", "majority") + (("identity",) if class_ids else ())
    metrics = {m: SegmentationMetric(num_classes, num_labels, matching="none" if m == "identity" else m)
               for m in matchings}
    labelled = covered = 0
    for pred, target in zip(preds, targets, strict=True):
        t = torch.from_numpy(target.astype(np.int64))[None]
        p = torch.from_numpy(pred.astype(np.int64))[None]
        labelled += int((t != IGNORE).sum())
        t = t.masked_fill(p == IGNORE, IGNORE)
        covered += int((t != IGNORE).sum())
        p = p.masked_fill(p == IGNORE, 0)
        for metric in metrics.values():
            metric.update(p, t)
    out: dict[str, float] = {}
    for name, metric in metrics.items():
        scores = metric.compute()
        out[f"miou_{name}"] = float(scores["miou"])
        out[f"pixel_accuracy_{name}"] = float(scores["pixel_accuracy"])
    out["coverage"] = covered / max(1, labelled)
    return out


def saliency_scores(preds: Iterable[np.ndarray], targets: Iterable[np.ndarray]) -> dict[str, float]:
    """Foreground IoU, F-beta (beta^2 = 0.3) and MAE (fractions) of binary maps vs {0,1,255} masks."""
    metric = SegmentationMetric(2, matching="none")
    maes = []
    for pred, target in zip(preds, targets, strict=True):
        p = (pred == 1).astype(np.int64)
        valid = target != IGNORE
        if valid.any():
            maes.append(float(np.abs(p[valid] - target[valid].astype(np.int64)).mean()))
        metric.update(torch.from_numpy(p)[None], torch.from_numpy(target.astype(np.int64))[None])
    cm = metric.confmat.double()  # [pred, target]
    tp, fp, fn = cm[1, 1], cm[1, 0], cm[0, 1]
    precision = float(tp / (tp + fp)) if tp + fp > 0 else 0.0
    recall = float(tp / (tp + fn)) if tp + fn > 0 else 0.0
    denom = BETA2 * precision + recall
    fbeta = (1 + BETA2) * precision * recall / denom if denom > 0 else 0.0
    iou = float(tp / (tp + fp + fn)) if tp + fp + fn > 0 else float("nan")
    return {
        "iou": iou,
        "fbeta": fbeta,
        "precision": precision,
        "recall": recall,
        "mae": float(np.mean(maes)) if maes else float("nan"),
    }


class MissingGroundTruthError(KeyError):
    """The split has no ground truth of the prior's kind: the prior is usable but cannot be scored."""


def score_prior_dir(
    prior_dir: str | Path, dataset: RawDataset, kind: str, num_classes: int, num_labels: int,
    progress: bool = False, class_ids: bool = False,
) -> dict[str, float]:
    """Read every ``<id>.png`` of ``prior_dir`` and score it against ``dataset``'s ground truth.

    Streamed: one (prior, ground truth) pair is in memory at a time (the scores accumulate confusion
    matrices), so scoring a split of any size takes the memory of one image.
    """
    key = "mask" if kind == "semantic" else "saliency"

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        names = tqdm(dataset.ids, desc=f"{Path(prior_dir).name}: scoring", unit="img", disable=not progress)
        for i, name in enumerate(names):
            path = Path(prior_dir) / f"{name}.png"
            pred = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if pred is None:
                raise FileNotFoundError(f"prior map {path} missing or unreadable")
            target = ground_truth(dataset, dataset.load(i), key)
            if target is None:
                raise MissingGroundTruthError(
                    f"{dataset.describe(i)} has no {key!r} ground truth; cannot score a {kind} prior on it"
                )
            yield pred, target

    a, b = itertools.tee(pairs())  # read in lockstep by the scores' zip: tee holds at most one pair
    preds, targets = (p for p, _ in a), (t for _, t in b)
    if kind == "semantic":
        return semantic_scores(preds, targets, num_classes, num_labels, class_ids=class_ids)
    return saliency_scores(preds, targets)


def ground_truth(dataset: Any, raw: dict[str, np.ndarray], key: str) -> np.ndarray | None:
    """``raw[key]``; for "saliency" on data that give none as an input (the built-in sets), the
    ground-truth foreground of the mask (``dataset.foreground``), read here to score, never as an input."""
    if key in raw:
        return raw[key]
    foreground = getattr(dataset, "foreground", None)
    if key == "saliency" and callable(foreground) and "mask" in raw:
        return foreground(raw["mask"]).astype(np.uint8)
    return None


def is_score(key: str) -> bool:
    """Whether a metric key is a score (IoU, accuracy, F-beta, MAE, coverage): stored as a fraction in
    JSON files (``metrics.json``, ``report.json``), shown in percent in tables."""
    return SCORE_KEY.search(key.lower()) is not None


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table with the union of the rows' keys as columns: score columns (:func:`is_score`)
    in percent with 1 decimal and ``(%)`` in the header, other floats with 2 decimals."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]

    def fmt(v: Any, column: str) -> str:
        if isinstance(v, float):
            return f"{100 * v:.1f}" if is_score(column) else f"{v:.2f}"
        return str(v)

    header = [f"{c} (%)" if is_score(c) else c for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, ""), c) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: Mapping[str, Any], title: str) -> str:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; return the Markdown text."""
    out_dir = Path(out_dir)
    atomic_write(out_dir / "report.json", json.dumps(report, indent=2, default=str).encode())
    text = f"# {title}\n\n" + markdown_table([report])
    atomic_write(out_dir / "report.md", text.encode())
    return text


def prior_panel(
    prior_dir: str | Path,
    dataset: RawDataset,
    kind: str,
    num_classes: int,
    num_labels: int,
    palette: np.ndarray,
    class_names: Sequence[str],
    num_images: int = 6,
) -> np.ndarray:
    """image | prior | ground truth for the first ``num_images`` of the split (a fixed sample).

    Semantic priors are drawn in the dataset's class colours: each cluster takes the class it
    overlaps most in the shown images (majority matching), so the prior and the ground truth can be
    compared by eye. Saliency priors are black (background) / white (foreground).
    """
    n = min(num_images, len(dataset))
    key = "mask" if kind == "semantic" else "saliency"
    samples = [dataset.load(i) for i in range(n)]
    samples = [{**s, key: gt} if (gt := ground_truth(dataset, s, key)) is not None else s for s in samples]
    preds = [cv2.imread(str(Path(prior_dir) / f"{dataset.ids[i]}.png"), cv2.IMREAD_UNCHANGED) for i in range(n)]
    has_gt = all(key in s for s in samples)
    if kind == "semantic":
        colours, names = color_palette(num_classes, palette), list(class_names)
        lut = np.full(256, IGNORE, dtype=np.int64)
        if has_gt:
            metric = SegmentationMetric(num_classes, num_labels, matching="majority")
            for pred, s in zip(preds, samples, strict=True):
                labelled = pred != IGNORE  # as in semantic_scores: prior pixels at 255 are not scored
                t = np.where(labelled, s[key], IGNORE).astype(np.int64)
                p = np.where(labelled, pred, 0).astype(np.int64)
                metric.update(torch.from_numpy(p)[None], torch.from_numpy(t)[None])
            lut[:num_labels] = metric.compute()["mapping"].numpy()
            lut[lut < 0] = IGNORE
        else:  # nothing to match against: clusters keep their own ids
            colours, names = color_palette(num_labels, palette), [f"cluster {i}" for i in range(num_labels)]
            lut[:num_labels] = np.arange(num_labels)
        preds = [lut[p] for p in preds]
    else:
        colours, names = np.array([[0, 0, 0], [255, 255, 255]], dtype=np.uint8), ["background", "foreground"]
    titles = ["image", f"prior ({Path(prior_dir).name.rsplit('-', 1)[0]})"] + (["ground truth"] if has_gt else [])
    rows = []
    for pred, s in zip(preds, samples, strict=True):
        row = [s["image"], colorize(pred, colours)]
        rows.append(row + ([colorize(s[key], colours)] if has_gt else []))
    return draw_panel(rows, titles, legend_entries(colours, names), label_columns=range(1, len(titles)))
