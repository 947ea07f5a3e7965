"""``predict(cfg)``: run a trained checkpoint on one's own images (``predict.py``).

``python predict.py ckpt_path=<run>/checkpoints/last.ckpt input=<image or folder> output=<folder>``
writes, per input image ``<rel path>.<ext>``, ``<output>/<rel path>.png`` (uint8 class / cluster ids
at the image's own resolution) and ``<output>/overlays/<rel path>.png`` (image | prediction with a
legend of the class colours). Any method's checkpoint works: its stored config rebuilds the module,
and ``predict_full`` tiles the image when the method was configured with a sliding window.

Messy folders: a file that cannot be read as an image is skipped with one warning (and listed at the
end; ``strict=true`` stops at the first), other files are listed once. An image of more than
``max_pixels`` is predicted block by block (``tile`` px blocks, each seen with ``tile_context`` px of
the image around it), so memory stays bounded (BENCHMARKS.md: peak RSS of a 6000x4000 image).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from tqdm import tqdm

from usgs.data.io import read_rgb
from usgs.data.transforms import normalize
from usgs.errors import UserError
from usgs.methods.base import SegmentationModule
from usgs.run.checkpoints import load_checkpoint
from usgs.run.evaluate import device_from_name
from usgs.run.start import check_writable
from usgs.visualize import color_palette, prediction_panel, write_png

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Backbones downsample by up to 32 (ResNet at output stride 32, PSPNet's pyramid bins): inputs are
# padded (edge replication) to a multiple of it and the prediction cropped back to the image.
PAD_MULTIPLE = 32


def list_images(source: str | Path) -> tuple[Path, list[Path]]:
    """``(root, images)``: one image file, or every image under a folder (recursive, sorted)."""
    path = Path(source)
    if path.is_file():
        return path.parent, [path]
    if not path.is_dir():
        raise FileNotFoundError(f"predict: input={path} is neither an image file nor a folder")
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    images = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
    others = Counter(p.suffix.lower() or "(none)" for p in files if p.suffix.lower() not in IMAGE_SUFFIXES)
    if others:
        log.warning("input=%s: %d file(s) that are not images are left out (%s); images are %s", path,
                    sum(others.values()), ", ".join(f"{n} {ext}" for ext, n in sorted(others.items())),
                    " ".join(IMAGE_SUFFIXES))
    if not images:
        raise FileNotFoundError(f"predict: no image ({', '.join(IMAGE_SUFFIXES)}) under input={path}")
    return path, images


def _blocks(length: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(length, start + tile)) for start in range(0, length, tile)]


@torch.no_grad()
def predict_image(module: SegmentationModule, image: np.ndarray, device: torch.device, tile: int | None = None,
                  context: int = 128) -> torch.Tensor:
    """Class / cluster ids ``[H,W]`` (int64, CPU) of a uint8 ``[H,W,3]`` image at its own size. With
    ``tile``, block by block: each ``tile`` x ``tile`` block is predicted from the block plus ``context``
    px of the image around it (memory of one block, not of the image)."""
    h, w = image.shape[:2]
    if tile is None or (h <= tile and w <= tile):
        return _predict_whole(module, image, device)
    out = torch.empty((h, w), dtype=torch.int64)
    for y0, y1 in _blocks(h, tile):
        for x0, x1 in _blocks(w, tile):
            top, left = max(0, y0 - context), max(0, x0 - context)
            region = image[top:min(h, y1 + context), left:min(w, x1 + context)]
            pred = _predict_whole(module, region, device)
            out[y0:y1, x0:x1] = pred[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def _predict_whole(module: SegmentationModule, image: np.ndarray, device: torch.device) -> torch.Tensor:
    h, w = image.shape[:2]
    x = normalize(image)[None].to(device)
    pad_h, pad_w = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    out = module.predict_full(x)
    if out.dim() == 4:  # logits / probabilities [1,K,H',W']
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = out.argmax(dim=1)
    return out[0, :h, :w].long().cpu()


def _legend(run_cfg: Any, module: SegmentationModule) -> tuple[np.ndarray | None, list[str]]:
    """The training dataset's palette and class names (only when the outputs are its classes)."""
    try:
        data = instantiate(run_cfg.data, prior=None, _convert_="all")
    except Exception as err:  # noqa: BLE001 - the legend is optional; the predictions are not
        log.warning("no dataset palette (%s: %s); using generated colours", type(err).__name__, err)
        return None, list(module.class_names)
    return np.asarray(data.palette), list(data.class_names)


def predict(cfg: Any) -> list[Path]:
    """Predict every image of ``cfg.input`` into ``cfg.output``; returns the written id PNGs."""
    run_cfg, module = load_checkpoint(cfg.ckpt_path)
    device = device_from_name(str(cfg.get("device", "auto")))
    module.to(device).eval()
    root, images = list_images(cfg.input)
    out_dir = check_writable(cfg.output, "output")
    strict, max_pixels = bool(cfg.get("strict", False)), cfg.get("max_pixels")
    tile, context = int(cfg.get("tile", 768)), int(cfg.get("tile_context", 128))
    base, names = _legend(run_cfg, module)
    num_outputs = int(module.val_metric.num_predictions)
    if module.val_metric.matching != "none":  # label-free: cluster ids, not classes (legend "cluster i")
        names = []
    log.info("%s from %s on %d image(s) -> %s", type(module).__name__, cfg.ckpt_path, len(images), out_dir)
    written, skipped = [], []
    for path in tqdm(images, desc="predict", unit="img", disable=not cfg.get("progress", True)):
        try:
            image = read_rgb(path)
        except (UserError, OSError) as err:
            if strict:
                raise
            log.warning("skipped %s: %s", path, err)
            skipped.append(path)
            continue
        large = max_pixels is not None and image.shape[0] * image.shape[1] > int(max_pixels)
        if large:
            log.warning("%s is %dx%d px, above max_pixels=%s: predicted in %d px blocks with %d px of context "
                        "(tile=..., tile_context=...; max_pixels=null predicts it whole, with more memory)",
                        path, image.shape[1], image.shape[0], max_pixels, tile, context)
        pred = predict_image(module, image, device, tile if large else None, context)
        rel = path.relative_to(root).with_suffix(".png")
        if int(pred.max()) > 255:
            raise ValueError(f"predict: {path} has prediction ids up to {int(pred.max())}: they do not fit a uint8 PNG")
        written.append(write_png(out_dir / rel, pred.numpy().astype(np.uint8)))
        if cfg.get("overlays", True):
            palette = color_palette(max(num_outputs, int(pred.max()) + 1), base)
            panel = prediction_panel([image], [None], [pred], palette, names)
            write_png(out_dir / "overlays" / rel, panel)
    if skipped and not written:
        raise UserError(f"predict: none of the {len(skipped)} image file(s) under input={cfg.input} could be read "
                        f"(first: {skipped[0]}; see the warnings above)")
    print(f"[usgs] {len(written)} prediction(s) (class-id PNGs) in {out_dir}; overlays in {out_dir / 'overlays'}")
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        print(f"[usgs] skipped {len(skipped)} unreadable file(s) (strict=true stops at the first): {shown}")
    return written
