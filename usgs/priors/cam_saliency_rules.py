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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

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
