"""Pictures of segmentations: colour maps and titled panels with a class legend.

One drawing module for every picture the suite writes: training overlays (TensorBoard / W&B,
``usgs.callbacks.PredictionOverlays``), evaluation overlays (``usgs.evaluation.report``), the priors
panel (``make_priors.py`` -> ``panel.png``) and ``predict.py``. Label maps are drawn as plain
colours, not blended over the image: textured images make blended colours hard to read. Tiles are
scaled up (nearest neighbour for labels) to at least ``min_tile`` pixels, so 32-64 px training
crops stay legible.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from usgs.atomic import atomic_write
from usgs.data.transforms import denormalize

IGNORE_INDEX = 255
IGNORE_COLOUR = (128, 128, 128)  # grey: ignore / no proposal
MIN_TILE = 192  # px, the shorter side of every tile
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BACKGROUND = 255  # white margins, titles in black

__all__ = [
    "color_palette", "colorize", "image_rgb", "draw_panel", "legend_entries", "prediction_panel", "write_png",
]


def color_palette(n: int, base: np.ndarray | None = None) -> np.ndarray:
    """``[n,3]`` uint8 colours: the dataset's palette first, then fixed pseudo-random ones."""
    rng = np.random.default_rng(0)
    extra = rng.integers(0, 256, size=(max(n, 1), 3), dtype=np.uint8)
    if base is not None and len(base):
        extra[: min(n, len(base))] = np.asarray(base, dtype=np.uint8)[:n]
    return extra[:n]


def colorize(ids: Tensor | np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Label map ``[H,W]`` -> uint8 ``[H,W,3]``; ids outside the palette (255 = ignore) are grey."""
    ids = ids.detach().cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    out = np.empty((*ids.shape, 3), dtype=np.uint8)
    out[:] = IGNORE_COLOUR
    valid = (ids >= 0) & (ids < len(palette))
    out[valid] = np.asarray(palette, dtype=np.uint8)[ids[valid].astype(np.int64)]
    return out


def image_rgb(image: Tensor | np.ndarray) -> np.ndarray:
    """A normalised ``[3,H,W]`` tensor (batch convention) or a uint8 ``[H,W,3]`` array -> uint8 RGB."""
    if isinstance(image, Tensor):
        if image.dtype == torch.uint8 and image.ndim == 3 and image.shape[-1] == 3:
            return image.cpu().numpy()
        return denormalize(image[None].detach().float().cpu())[0].numpy()
    return np.asarray(image, dtype=np.uint8)


def legend_entries(palette: np.ndarray, names: Sequence[str], max_entries: int = 48) -> list[tuple[str, tuple]]:
    """``(name, colour)`` pairs for the legend: the named classes, then ``cluster <i>`` for extra ids."""
    entries = []
    for i, colour in enumerate(np.asarray(palette)[:max_entries]):
        name = names[i] if i < len(names) else f"cluster {i}"
        entries.append((name, tuple(int(c) for c in colour)))
    return entries


def _scale(tile: np.ndarray, factor: int, labels: bool) -> np.ndarray:
    if factor == 1:
        return tile
    h, w = tile.shape[:2]
    interp = cv2.INTER_NEAREST if labels else cv2.INTER_LINEAR
    return cv2.resize(tile, (w * factor, h * factor), interpolation=interp)


def _text_rows(entries: Sequence[tuple[str, tuple]], width: int, scale: float) -> list[list[tuple[str, tuple]]]:
    """Wrap legend entries (a swatch + name each) into rows no wider than ``width``."""
    rows: list[list[tuple[str, tuple]]] = [[]]
    used = 0
    for name, colour in entries:
        w = 20 + cv2.getTextSize(name, _FONT, scale, 1)[0][0] + 16
        if rows[-1] and used + w > width:
            rows.append([])
            used = 0
        rows[-1].append((name, colour))
        used += w
    return [r for r in rows if r]


def draw_panel(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str],
               legend: Sequence[tuple[str, tuple]] = (), min_tile: int = MIN_TILE,
               label_columns: Sequence[int] = ()) -> np.ndarray:
    """A grid of RGB tiles with a title over each column and a colour legend underneath.

    ``rows``: lists of uint8 ``[H,W,3]`` tiles (resized to the first tile's size when they differ);
    ``titles``: one per column; ``label_columns``: columns holding label colours (nearest neighbour). Returns a uint8 ``[H',W',3]`` image
    whose tiles have a shorter side of at least ``min_tile`` pixels.
    """
    if not rows or any(len(r) != len(titles) for r in rows):
        raise ValueError(f"draw_panel: every row needs {len(titles)} tiles (one per title)")
    h, w = rows[0][0].shape[:2]
    factor = max(1, -(-min_tile // max(1, min(h, w))))  # ceil: tiles at least min_tile px
    th, tw, gap, scale = h * factor, w * factor, 4, 0.5
    title_h, line_h = 24, 22
    width = len(titles) * tw + (len(titles) + 1) * gap
    legend_rows = _text_rows(legend, width - 2 * gap, scale)
    height = title_h + len(rows) * (th + gap) + gap + len(legend_rows) * line_h + (gap if legend_rows else 0)
    canvas = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)
    for c, title in enumerate(titles):
        x = gap + c * (tw + gap)
        while len(title) > 3 and cv2.getTextSize(title, _FONT, scale, 1)[0][0] > tw - 4:
            title = title[:-3] + ".."  # clipped to its column
        cv2.putText(canvas, title, (x + 2, title_h - 7), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    for r, tiles in enumerate(rows):
        y = title_h + r * (th + gap)
        for c, tile in enumerate(tiles):
            x = gap + c * (tw + gap)
            labels = c in label_columns
            tile = np.asarray(tile, dtype=np.uint8)
            if tile.shape[:2] == (h, w):
                tile = _scale(tile, factor, labels)
            else:  # images of a split differ in size: fit the first tile's
                interp = cv2.INTER_NEAREST if labels else cv2.INTER_AREA
                tile = cv2.resize(tile, (tw, th), interpolation=interp)
            canvas[y:y + th, x:x + tw] = tile
    y = title_h + len(rows) * (th + gap) + gap
    for entries in legend_rows:
        x = gap
        for name, colour in entries:
            cv2.rectangle(canvas, (x, y + 3), (x + 14, y + 17), colour, -1)
            cv2.rectangle(canvas, (x, y + 3), (x + 14, y + 17), (0, 0, 0), 1)
            cv2.putText(canvas, name, (x + 20, y + 15), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
            x += 20 + cv2.getTextSize(name, _FONT, scale, 1)[0][0] + 16
        y += line_h
    return canvas


def prediction_panel(images: Sequence[Tensor | np.ndarray], masks: Sequence[Tensor | np.ndarray | None],
                     preds: Sequence[Tensor | np.ndarray], palette: np.ndarray, class_names: Sequence[str],
                     titles: Sequence[str] = ("image", "ground truth", "prediction")) -> np.ndarray:
    """Rows of image | ground truth | prediction (the ground-truth column is left out when every mask
    is None), with column titles and a legend of the palette's class colours."""
    with_gt = any(m is not None for m in masks)
    rows = []
    for image, mask, pred in zip(images, masks, preds, strict=True):
        row = [image_rgb(image)]
        if with_gt:
            row.append(colorize(mask if mask is not None else np.full(pred.shape, IGNORE_INDEX), palette))
        row.append(colorize(pred, palette))
        rows.append(row)
    cols = list(titles) if with_gt else [titles[0], titles[-1]]
    return draw_panel(rows, cols, legend_entries(palette, class_names),
                      label_columns=range(1, len(cols)))


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image (or a ``[H,W]`` label map) as PNG atomically (temp file, rename)."""
    path = Path(path)
    array = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write(path, data.tobytes())
    return path
