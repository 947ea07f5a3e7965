"""Pseudo ground truth from class attention (Grad-CAM) + saliency, with the seed's rules.

The seed is ``src/seed/create_guides.py`` (``combine_masks``, fusion "g2") of
Amsterdam-Internships/Image-Level-Supervised-Semantic-Segmentation. Per image, given raw attention maps
in [0, 1] for the image's classes and a binary saliency map:

1. blobs are 8-connected components; a blob is kept when it has MORE than its minimum number of
   pixels and a bounding box of non-zero area (``filter_blobs``: the seed drops one-row or
   one-column "lines"; ``drop_thin_blobs=False`` keeps them). Saliency blobs need 1% of the image,
   attention blobs (attention ``> threshold`` = 0.4) more than 25 pixels;
2. for every kept saliency blob, the classes with a kept attention blob overlapping it: none -> the
   blob gets ``unmatched_label``, one -> the whole blob gets that class, several -> a dense CRF over
   the raw attention of those classes (unary = -attention) decides inside the blob;
3. every kept attention blob that touches no kept saliency blob is written whole with its class
   (``isolated="blob"``, the seed); where such blobs of several classes overlap the most attended
   class wins (the seed's winner depends on its file listing order). ``isolated="pixel"`` instead
   keeps attention pixel by pixel outside the saliency blobs (the suite's earlier rule);
4. every pixel still unlabelled gets ``fill_label``. The seed writes background (0) there
   (``merged_mask[merged_mask == 255] = 0``), and its ``unmatched_label`` is background too; on data
   without a background class both stay 255 (ignore).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import Tensor, nn

from usgs.data.base import SegmentationDataModule
from usgs.data.prior_store import find_prior_dir
from usgs.data.transforms import normalize
from usgs.nets.weights import read_state_dict
from usgs.priors.base import MaskPrior, PostProcess, State

IGNORE = 255
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings for blobs claimed by several classes (the seed's values)."""

    iters: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0


def components(binary: np.ndarray, min_pixels: float, drop_thin: bool = False) -> list[np.ndarray]:
    """8-connected components of ``binary`` [H,W] with MORE than ``min_pixels`` pixels, as bool masks.

    ``drop_thin``: also drop components whose bounding box has zero area (a single row or column),
    the seed's ``bbox_area(mask) != 0`` test.
    """
    labelled, count = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    blobs = []
    for k, box in enumerate(ndimage.find_objects(labelled), start=1):
        if box is None or sizes[k] <= min_pixels:
            continue
        if drop_thin and (box[0].stop - box[0].start == 1 or box[1].stop - box[1].start == 1):
            continue
        blobs.append(labelled == k)
    return blobs


def crf_labels(image: np.ndarray, attention: np.ndarray, params: CRFParams) -> np.ndarray:
    """Dense-CRF labelling [H,W] (indices into ``attention``'s channels) with unary ``-attention``."""
    from usgs.priors.crf import dense_crf  # pydensecrf is only needed when several classes share a blob

    logits = attention.astype(np.float64)
    probs = np.exp(logits - logits.max(0, keepdims=True))
    probs /= probs.sum(0, keepdims=True)  # -log softmax(a) = -a + const: the seed's unary -attention
    refined = dense_crf(image, probs.astype(np.float32), iters=params.iters,
                        gaussian_sxy=params.gaussian_sxy, gaussian_compat=params.gaussian_compat,
                        bilateral_sxy=params.bilateral_sxy, bilateral_srgb=params.bilateral_srgb,
                        bilateral_compat=params.bilateral_compat)
    return np.asarray(refined).argmax(0)


def attention_saliency_pseudo_gt(image: np.ndarray, attention: np.ndarray, classes: Sequence[int],
                                 saliency: np.ndarray, threshold: float = 0.4,
                                 min_saliency_fraction: float = 0.01, min_attention_pixels: int = 25,
                                 unmatched_label: int = IGNORE, fill_label: int = IGNORE,
                                 isolated: str = "blob", drop_thin_blobs: bool = True,
                                 crf: CRFParams | None = None) -> np.ndarray:
    """Pseudo label map uint8 [H,W] (255 = ignore) from the rules in the module docstring.

    ``image`` uint8 [H,W,3] RGB (for the CRF), ``attention`` float [K,H,W] raw maps in [0,1] for the
    ``classes`` (K class ids), ``saliency`` [H,W] with 1 = foreground (0 and 255 count as not salient).
    """
    h, w = saliency.shape
    if attention.ndim != 3 or attention.shape[1:] != (h, w) or len(classes) != attention.shape[0]:
        raise ValueError(f"attention must be [K,H,W] with K = len(classes) = {len(classes)} and H,W = "
                         f"saliency's {(h, w)}, got {attention.shape}")
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape} and saliency {saliency.shape} sizes differ")
    if isolated not in ("blob", "pixel"):
        raise ValueError(f"isolated must be 'blob' (the seed) or 'pixel', got {isolated!r}")
    crf = crf or CRFParams()
    out = np.full((h, w), IGNORE, dtype=np.uint8)
    class_blobs = [components(attention[k] > threshold, min_attention_pixels, drop_thin_blobs)
                   for k in range(len(classes))]
    kept = np.zeros_like(attention, dtype=bool)
    for k, blobs in enumerate(class_blobs):
        for blob in blobs:
            kept[k] |= blob
    salient_blobs = components(saliency == 1, min_saliency_fraction * h * w, drop_thin_blobs)
    salient = np.zeros((h, w), dtype=bool)
    for blob in salient_blobs:
        salient |= blob

    class_ids = np.asarray(classes, dtype=np.int64)
    for blob in salient_blobs:
        overlapping = [k for k in range(len(classes)) if (kept[k] & blob).any()]
        if not overlapping:
            out[blob] = unmatched_label
        elif len(overlapping) == 1:
            out[blob] = class_ids[overlapping[0]]
        else:
            labels = crf_labels(image, attention[overlapping], crf)
            out[blob] = class_ids[np.asarray(overlapping)[labels[blob]]]

    if isolated == "blob":  # whole attention blobs that touch no salient blob
        alone = np.zeros_like(kept)
        for k, blobs in enumerate(class_blobs):
            for blob in blobs:
                if not (blob & salient).any():
                    alone[k] |= blob
        outside = alone.any(0)
    else:  # attention pixels outside the salient blobs
        alone = kept
        outside = kept.any(0) & ~salient
    strongest = np.where(alone, attention, -np.inf).argmax(0)
    out[outside] = class_ids[strongest[outside]]
    untouched = (out == IGNORE) & ~salient
    out[untouched] = fill_label
    return out


class AttentionSource(Protocol):
    """``model`` (loaded from a checkpoint by the prior) and a call ``(image [1,3,H,W], labels [1,C])
    -> attention [1,C,H,W] in [0,1]`` (e.g. :class:`usgs.priors.cam.GradCAM`)."""

    model: nn.Module

    def __call__(self, image: Tensor, labels: Tensor) -> Tensor: ...


def load_attention(attention: AttentionSource, checkpoint: str | None) -> AttentionSource:
    """Load a ``train.py`` checkpoint's weights into ``attention.model`` (frozen, eval mode).

    A checkpoint is required: attention from an untrained model would be silently meaningless.
    """
    train_hint = "train the attention model first (python train.py experiment=classifier) and pass "
    if not checkpoint:
        raise ValueError(f"the pseudo labeler needs a trained attention model: {train_hint}"
                         "checkpoint=<run>/checkpoints/<name>.ckpt (e.g. model.pseudo_labeler.checkpoint=...)")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: {train_hint}<run>/checkpoints/<name>.ckpt")
    attention.model.load_state_dict(read_state_dict(path))  # weights_only=True: runs no code from the file
    attention.model.eval().requires_grad_(False)
    return attention


class OnlinePseudoLabeler(nn.Module):
    """Pseudo labels during training for samples that only have image/crop labels (Vaihingen N2 crops).

    ``(image [B,3,H,W] normalised, labels [B,C]) -> int64 [B,H,W]`` (255 = ignore) by the attention
    rules without saliency (aerial tiles have no salient object): attention > ``threshold`` in
    8-connected blobs of more than ``min_attention_pixels``, the most attended class where several
    overlap. An ``nn.Module`` so that the frozen attention model follows the method's device.
    """

    def __init__(self, attention: AttentionSource, checkpoint: str | None, threshold: float = 0.4,
                 min_attention_pixels: int = 25) -> None:
        super().__init__()
        self.attention = load_attention(attention, checkpoint)
        self.model = attention.model  # registered as a sub-module (moves with .to(device))
        self.threshold, self.min_attention_pixels = threshold, min_attention_pixels

    def forward(self, image: Tensor, labels: Tensor) -> Tensor:
        maps = self.attention(image, labels).float().cpu().numpy()
        rgb = np.zeros(image.shape[-2:] + (3,), np.uint8)  # no CRF without saliency: colours unused
        empty = np.zeros(image.shape[-2:], np.uint8)
        out = []
        for b in range(image.shape[0]):
            classes = np.flatnonzero(labels[b].cpu().numpy() > 0)
            out.append(attention_saliency_pseudo_gt(rgb, maps[b, classes], classes.tolist(), empty,
                                                    threshold=self.threshold,
                                                    min_attention_pixels=self.min_attention_pixels))
        return torch.from_numpy(np.stack(out)).long().to(image.device)


# Map resize back to the image: the seed's F.interpolate(size=(h, w)) is nearest; bilinear is smoother.
_RESIZE_OPTIONS: dict[str, dict[str, Any]] = {
    "nearest": {"mode": "nearest"}, "bilinear": {"mode": "bilinear", "align_corners": False}}


def image_labels(raw: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
    """Class ids present in a raw sample: its ``labels`` if given, else its mask's classes."""
    if "labels" in raw:
        return np.flatnonzero(np.asarray(raw["labels"]) > 0)
    values = np.unique(raw["mask"])
    return values[values < num_classes].astype(np.int64)


class AttentionSaliencyPrior(MaskPrior):
    """``prior=cam_saliency``: pseudo labels from a trained model's attention + saliency (module docstring).

    ``model`` is the trained module (``make_priors.py`` loads it from ``prior.checkpoint``) and
    ``attention(model)`` builds the attention source (``GradCAM`` of a classifier, ``RefinedMasks`` of a
    single-stage model). Image-level labels, the only supervision used, come from
    ``datamodule.dataset(split)``; saliency from the dataset's own ``saliency`` (``saliency="dataset"``),
    from a cached saliency prior (its name, e.g. ``saliency_unsup``) or none (``None``: attention
    alone, the "CAM only" baseline). ``input_size`` [H,W] resizes images for the network (the maps
    are resized back, with ``attention_resize`` "nearest" as the seed's ``create_network_attention.py``
    or "bilinear"; the seed's VGG input is 224x224); ``background_index`` is never given
    attention (VOC's background). ``unmatched_label`` and ``fill_label`` default (``None``) to
    ``background_index`` when the data has one (the seed writes background there) and to 255
    (ignore) when it has none.
    """

    class_ids = True  # pseudo labels: the dataset's class ids, scored also without matching

    def __init__(self, model: nn.Module, attention: Callable[[nn.Module], AttentionSource],
                 datamodule: SegmentationDataModule, split: str = "train", saliency: str | None = "dataset",
                 threshold: float = 0.4, min_saliency_fraction: float = 0.01, min_attention_pixels: int = 25,
                 unmatched_label: int | None = None, fill_label: int | None = None, isolated: str = "blob",
                 drop_thin_blobs: bool = True, background_index: int | None = None,
                 crf: dict[str, Any] | None = None, input_size: Sequence[int] | None = None,
                 batch_size: int = 1, postprocess: PostProcess | None = None, seed: int = 0,
                 attention_resize: str = "nearest") -> None:
        super().__init__(batch_size, postprocess, seed)
        if attention_resize not in _RESIZE_OPTIONS:
            raise ValueError(f"attention_resize must be one of {sorted(_RESIZE_OPTIONS)}, got {attention_resize!r}")
        self.resize_options = _RESIZE_OPTIONS[attention_resize]
        model.eval().requires_grad_(False)
        self.attention = attention(model)
        self.dataset = datamodule.dataset(split, transform=None)
        self.num_classes = datamodule.num_classes
        self.saliency_dir = None
        if saliency not in (None, "dataset"):
            if datamodule.prior_root is None:
                raise ValueError(f"saliency={saliency!r} reads a prior cache: set data.prior_root")
            self.saliency_dir = find_prior_dir(
                datamodule.prior_root, datamodule.name, split, saliency, datamodule.data_identity(self.dataset)
            )
        self.use_saliency = saliency is not None
        default = IGNORE if background_index is None else background_index
        self.rules: dict[str, Any] = {
            "threshold": threshold, "min_saliency_fraction": min_saliency_fraction,
            "min_attention_pixels": min_attention_pixels, "isolated": isolated, "drop_thin_blobs": drop_thin_blobs,
            "unmatched_label": default if unmatched_label is None else unmatched_label,
            "fill_label": default if fill_label is None else fill_label}
        self.background_index = background_index
        self.crf = CRFParams(**(crf or {}))
        self.input_size = tuple(input_size) if input_size else None

    @property
    def num_labels(self) -> int:
        return self.num_classes

    def saliency_of(self, index: int, raw: dict[str, np.ndarray]) -> np.ndarray:
        h, w = raw["image"].shape[:2]
        if not self.use_saliency:
            return np.zeros((h, w), dtype=np.uint8)
        if self.saliency_dir is None:
            if "saliency" not in raw:
                raise KeyError(f"{self.dataset.describe(index)} has no saliency: use prior.saliency=<saliency "
                               "prior name> (e.g. saliency_unsup) or prior.saliency=null")
            return raw["saliency"]
        path = self.saliency_dir / f"{self.dataset.ids[index]}.png"
        return np.asarray(Image.open(path))

    def local(self, images: Sequence[np.ndarray], indices: Sequence[int]) -> list[State]:
        states = []
        for image, index in zip(images, indices, strict=True):
            raw = self.dataset.load(index)
            classes = [c for c in image_labels(raw, self.num_classes) if c != self.background_index]
            if not classes:
                states.append({"pseudo": np.full(image.shape[:2], self.rules["fill_label"], np.uint8)})
                continue
            x = normalize(image)[None]
            if self.input_size:
                x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
            labels = torch.zeros(1, self.num_classes)
            labels[0, classes] = 1.0
            maps = self.attention(x, labels)
            maps = F.interpolate(maps, size=image.shape[:2], **self.resize_options)[0, classes]
            pseudo = attention_saliency_pseudo_gt(image, maps.clamp(0, 1).numpy(), classes,
                                                  self.saliency_of(index, raw), crf=self.crf, **self.rules)
            states.append({"pseudo": pseudo})
        return states

    def finalize_raw(self, image: np.ndarray, state: State) -> np.ndarray:
        return state["pseudo"]
