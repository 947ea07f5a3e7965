"""``predict(cfg)``: run a trained checkpoint on one's own images (``predict.py``).

``python predict.py ckpt_path=<run>/checkpoints/last.ckpt input=<image or folder> output=<folder>``
writes, per input image ``<rel path>.<ext>``, ``<output>/<rel path>.png`` (uint8 class / cluster ids
at the image's own resolution) and ``<output>/overlays/<rel path>.png`` (image | prediction with a
legend of the class colours). Any method's checkpoint works: its stored config rebuilds the module,
and ``predict_full`` tiles the image when the method was configured with a sliding window.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from tqdm import tqdm

from usgs.data.io import read_rgb
from usgs.data.transforms import normalize
from usgs.methods.base import SegmentationModule
from usgs.run.checkpoints import load_checkpoint
from usgs.run.evaluate import device_from_name
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
    images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise FileNotFoundError(f"predict: no image ({', '.join(IMAGE_SUFFIXES)}) under input={path}")
    return path, images


@torch.no_grad()
def predict_image(module: SegmentationModule, image: np.ndarray, device: torch.device) -> torch.Tensor:
    """Class / cluster ids ``[H,W]`` (int64, CPU) of a uint8 ``[H,W,3]`` image at its own size."""
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
    out_dir = Path(cfg.output)
    base, names = _legend(run_cfg, module)
    num_outputs = int(module.val_metric.num_predictions)
    if module.val_metric.matching != "none":  # label-free: cluster ids, not classes (legend "cluster i")
        names = []
    log.info("%s from %s on %d image(s) -> %s", type(module).__name__, cfg.ckpt_path, len(images), out_dir)
    written = []
    for path in tqdm(images, desc="predict", unit="img", disable=not cfg.get("progress", True)):
        image = read_rgb(path)
        pred = predict_image(module, image, device)
        rel = path.relative_to(root).with_suffix(".png")
        if int(pred.max()) > 255:
            raise ValueError(f"predict: {path} has prediction ids up to {int(pred.max())}: they do not fit a uint8 PNG")
        written.append(write_png(out_dir / rel, pred.numpy().astype(np.uint8)))
        if cfg.get("overlays", True):
            palette = color_palette(max(num_outputs, int(pred.max()) + 1), base)
            panel = prediction_panel([image], [None], [pred], palette, names)
            write_png(out_dir / "overlays" / rel, panel)
    print(f"[usgs] {len(written)} prediction(s) (class-id PNGs) in {out_dir}; overlays in {out_dir / 'overlays'}")
    return written
