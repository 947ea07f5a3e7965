"""The suite's one dense CRF: fully-connected CRF with Gaussian edge potentials (Kraehenbuehl & Koltun 2011).

A thin wrapper over ``pydensecrf`` (pip ``pydensecrf2``) used by MaskContrast's saliency refinement
and by the weak-supervision pseudo-label pipeline; each caller passes its own kernel parameters.
Published settings, as keyword dicts for :func:`dense_crf`:

- :data:`MASKCONTRAST_CRF` -- MaskContrast (Van Gansbeke et al. 2021) saliency refinement:
  Gaussian sxy 1, compat 3; bilateral sxy 67, srgb 3, compat 4; 10 iterations.
- :data:`WEAK_CRF` -- the weak-supervision seed work (DeepLab-style CRF, Chen et al. 2015 values):
  Gaussian sxy 3, compat 3; bilateral sxy 80, srgb 13, compat 10; 10 iterations. The image-level
  seed's guide stage (``util/apply_dense_crf.py``, ``stage='guide'``) and Araslanov & Roth's
  ``utils/dcrf.py`` both use these.
- :data:`STEGO_CRF` -- STEGO (Hamilton et al. 2022) test-time CRF (``src/crf.py`` @ 8c1ad0a9, lines
  13-18, 35-43): MaskContrast's kernels on the softmax of the probe's logits, unary
  ``unary_from_softmax`` (probabilities clipped at 1e-5). It feeds the image as BGR; the bilateral
  kernel has one colour width for all channels, so the channel order does not change it.
- :data:`DEEPLAB_TEST_CRF` -- the image-level seed's test-time CRF on DeepLab's arg-max labels
  (``apply_dense_crf(..., stage='deeplab')``: ``unary_from_labels`` with ``gt_prob`` 0.9; Gaussian
  sxy 3, compat 3; bilateral sxy 121, srgb 5, compat 4; 10 iterations), for :func:`label_crf`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dense_crf", "label_crf", "MASKCONTRAST_CRF", "WEAK_CRF", "DEEPLAB_TEST_CRF", "STEGO_CRF"]

MASKCONTRAST_CRF: dict[str, float] = {
    "iters": 10,
    "gaussian_sxy": 1.0,
    "gaussian_compat": 3.0,
    "bilateral_sxy": 67.0,
    "bilateral_srgb": 3.0,
    "bilateral_compat": 4.0,
}
WEAK_CRF: dict[str, float] = {
    "iters": 10,
    "gaussian_sxy": 3.0,
    "gaussian_compat": 3.0,
    "bilateral_sxy": 80.0,
    "bilateral_srgb": 13.0,
    "bilateral_compat": 10.0,
}

STEGO_CRF: dict[str, float] = {**MASKCONTRAST_CRF, "unary_clip": 1e-5}

DEEPLAB_TEST_CRF: dict[str, float] = {
    "gt_prob": 0.9,
    "iters": 10,
    "gaussian_sxy": 3.0,
    "gaussian_compat": 3.0,
    "bilateral_sxy": 121.0,
    "bilateral_srgb": 5.0,
    "bilateral_compat": 4.0,
}


def label_crf(image: np.ndarray, labels: np.ndarray, gt_prob: float = 0.9, **kernels: float) -> np.ndarray:
    """Refine a hard label map [H,W] with a dense CRF over the classes it contains.

    Each pixel's unary trusts its label with probability ``gt_prob`` and spreads the rest evenly over
    the other present classes (pydensecrf's ``unary_from_labels(..., zero_unsure=False)``, as the
    image-level seed's ``evaluate_deeplabv3.py``); a map with one class is returned unchanged.
    ``kernels``: :func:`dense_crf`'s ``iters`` and kernel parameters. Returns the refined class ids.
    """
    if not 0.0 < gt_prob < 1.0:
        raise ValueError(f"label_crf: gt_prob must be in (0, 1), got {gt_prob}")
    classes, index = np.unique(labels, return_inverse=True)
    if len(classes) == 1:
        return labels.copy()
    n, (h, w) = len(classes), labels.shape
    probs = np.full((n, h * w), (1.0 - gt_prob) / (n - 1), dtype=np.float32)
    probs[index.ravel(), np.arange(h * w)] = gt_prob
    refined = dense_crf(image, probs.reshape(n, h, w), **kernels)
    return classes[refined.argmax(0)]


def dense_crf(
    image: np.ndarray,
    unary_probs: np.ndarray,
    iters: int = 10,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_compat: float = 10.0,
    unary_clip: float = 1e-8,
) -> np.ndarray:
    """Refine per-pixel class probabilities with a dense CRF.

    Args:
        image: uint8 [H,W,3] RGB image (the bilateral kernel's colour features).
        unary_probs: float [C,H,W] class probabilities (C >= 2; each pixel should sum to 1); the
            unary energy is ``-log p``, p clipped at ``unary_clip`` (hard 0/1 maps stay finite).
        iters: mean-field iterations.
        gaussian_sxy, gaussian_compat: smoothness kernel (position only) width and weight.
        bilateral_sxy, bilateral_srgb, bilateral_compat: appearance kernel widths and weight.

    Returns:
        float32 [C,H,W] approximate marginals after ``iters`` mean-field steps.
    """
    import pydensecrf.densecrf as dcrf  # local: only CRF users need the compiled extension

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"dense_crf: image must be uint8 [H,W,3], got {image.dtype} {image.shape}")
    if unary_probs.ndim != 3 or unary_probs.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"dense_crf: unary_probs must be [C,H,W] with H,W = {image.shape[:2]}, got {unary_probs.shape}"
        )
    c, h, w = unary_probs.shape
    if c < 2:
        raise ValueError(f"dense_crf: need at least 2 classes, got {c}")
    unary = -np.log(np.clip(unary_probs.astype(np.float32), unary_clip, 1.0)).reshape(c, -1)
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image), compat=bilateral_compat
    )
    q = crf.inference(int(iters))
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)
