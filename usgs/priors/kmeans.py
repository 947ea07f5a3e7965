"""K-means colour priors: the seed recipe (OpenCV + scikit-learn) and the fast batched torch version.

Both are two-stage: per image, cluster the pixels into ``k`` colour clusters; then cluster all
per-image centres into ``k`` (G) global clusters and relabel every pixel by its local
centre's global cluster. The fast prior can also run one global stage directly on sampled pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn
from torch.nn import functional as F

from usgs.data.transforms import normalize
from usgs.nets.dense_outputs import dense_outputs
from usgs.nets.kmeans import assign, kmeans
from usgs.priors.base import MaskPrior, PostProcess, State

__all__ = ["SeedKMeansPrior", "TorchKMeansPrior", "pixel_features"]

_COLOUR_SPACES = {"rgb": None, "lab": cv2.COLOR_RGB2LAB, "hsv": cv2.COLOR_RGB2HSV_FULL}


def _check_labels(local_k: int, k: int) -> None:
    if local_k < 1 or not 1 <= k <= 255:
        raise ValueError(f"need local_k >= 1 and 1 <= k <= 255 (uint8 PNG, 255 = ignore), got {local_k}, {k}")


class SeedKMeansPrior(MaskPrior):
    """The seed work's k-means prior, kept faithful as the reference (slow: ~250 ms per image).

    Per image ``cv2.kmeans`` on raw RGB pixels (``local_k`` = 5, 10 attempts, 10 iterations / eps
    1.0, ``KMEANS_RANDOM_CENTERS``), then scikit-learn ``KMeans`` over all per-image centres into
    ``k`` = G global clusters (40 by default; ``n_init`` = 10 restarts, scikit-learn's default when
    the seed called ``KMeans(n_clusters=G)``, "auto" since 1.4), and each local cluster takes its
    centre's global cluster.
    ``cv2.setRNGSeed(seed, image index)`` makes each image reproducible wherever it runs.
    """

    needs_fit = True
    fit_keys = ("centers",)  # fit clusters the per-image centres only
    parallel = True

    def __init__(
        self,
        k: int = 40,
        local_k: int = 5,
        attempts: int = 10,
        max_iter: int = 10,
        eps: float = 1.0,
        n_init: int | Literal["auto"] = 10,
        batch_size: int = 8,
        postprocess: PostProcess | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, postprocess=postprocess, seed=seed)
        _check_labels(local_k, k)
        self.local_k, self.num_clusters = int(local_k), int(k)
        self.attempts, self.max_iter, self.eps, self.n_init = int(attempts), int(max_iter), float(eps), n_init
        self.global_centers: np.ndarray | None = None

    @property
    def num_labels(self) -> int:
        return self.num_clusters

    def local(self, images: Sequence[np.ndarray], indices: Sequence[int]) -> list[State]:
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, self.max_iter, self.eps)
        states = []
        for image, index in zip(images, indices, strict=True):
            cv2.setRNGSeed(self.seed * 1_000_003 + int(index))
            pixels = image.reshape(-1, 3).astype(np.float32)
            _, labels, centers = cv2.kmeans(
                pixels,
                self.local_k,
                None,
                criteria,
                self.attempts,  # type: ignore[call-overload]
                cv2.KMEANS_RANDOM_CENTERS,
            )
            states.append({"labels": labels.reshape(image.shape[:2]).astype(np.uint8), "centers": centers})
        return states

    def fit(self, states: Sequence[State], load_image: object = None) -> None:
        centers = np.concatenate([s["centers"] for s in states]).astype(np.float64)
        if len(centers) < self.num_clusters:
            raise ValueError(f"only {len(centers)} local centres for {self.num_clusters} global clusters")
        km = KMeans(n_clusters=self.num_clusters, random_state=self.seed, n_init=self.n_init).fit(centers)
        self.global_centers = km.cluster_centers_

    def fit_state(self) -> State:
        assert self.global_centers is not None, "fit() first"
        return {"global_centers": self.global_centers}

    def load_fit_state(self, state: State) -> None:
        self.global_centers = state["global_centers"]

    def finalize_raw(self, image: np.ndarray, state: State) -> np.ndarray:
        if self.global_centers is None:
            raise RuntimeError("SeedKMeansPrior.finalize before fit")
        d = ((state["centers"][:, None].astype(np.float64) - self.global_centers[None]) ** 2).sum(-1)
        lut = d.argmin(1).astype(np.uint8)
        return lut[state["labels"]]


def pixel_features(image: np.ndarray, colour_space: str = "lab", xy_weight: float = 0.0) -> torch.Tensor:
    """Per-pixel features float32 [H*W, D] of a uint8 RGB image: colour in [0,1] (+ weighted x, y in [0,1]).

    ``hsv`` is the HSV cone (value, then saturation-scaled cosine and sine of the hue), so that
    hue wraps around instead of splitting red at both ends of a line.
    """
    if colour_space not in _COLOUR_SPACES:
        raise ValueError(f"unknown colour space {colour_space!r}; valid: {sorted(_COLOUR_SPACES)}")
    code = _COLOUR_SPACES[colour_space]
    colour = image if code is None else cv2.cvtColor(image, code)
    feats = torch.from_numpy(colour.reshape(-1, 3)).float().div_(255.0)
    if colour_space == "hsv":
        # hue is an angle: on the HSV cone (value, saturation x cos / sin of hue, mapped to [0,1])
        # red at hue 0 and at hue 1 is one colour, where a plain (h, s, v) line splits it in two
        angle = 2 * torch.pi * feats[:, 0]
        sat = feats[:, 1]
        feats = torch.stack([feats[:, 2], 0.5 + 0.5 * sat * angle.cos(), 0.5 + 0.5 * sat * angle.sin()], 1)
    if xy_weight > 0:
        h, w = image.shape[:2]
        ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        feats = torch.cat([feats, xy_weight * torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)], 1)
    return feats


class TorchKMeansPrior(MaskPrior):
    """Fast k-means prior: batched torch k-means (``usgs.nets.kmeans``) on the input's device.

    ``k``: number of prior clusters G; ``local_k``: clusters per image.
    Per-image clustering runs for ``batch_size`` images at once on ``samples_per_image`` random
    pixels each (``None``: every pixel, one image per problem, as the seed); features are colour in
    ``colour_space`` and optional xy position with ``xy_weight``; all pixels are then assigned to
    their nearest local centre. ``stages=2``: global k-means of all local
    centres (best of ``restarts`` runs, solved as one batch), as in the seed. ``stages=1``: global
    k-means directly on the sampled pixels of all images. ``model``: a trained module whose dense,
    L2-normalised features (``usgs.nets.dense_outputs``) are appended to colour and
    position, weighted by ``feature_weight`` (``prior.features_checkpoint=<best.ckpt>``).
    """

    needs_fit = True
    fit_keys = ("centers",)  # fit clusters the per-image centres only
    parallel = False

    def __init__(
        self,
        k: int = 40,
        local_k: int = 5,
        stages: Literal[1, 2] = 2,
        colour_space: Literal["rgb", "lab", "hsv"] = "hsv",
        xy_weight: float = 0.5,
        samples_per_image: int | None = 256,
        iters: int = 10,
        global_iters: int = 100,
        restarts: int = 4,
        device: str = "cpu",
        batch_size: int = 64,
        postprocess: PostProcess | None = None,
        seed: int = 0,
        model: nn.Module | None = None,
        feature_weight: float = 1.0,
    ) -> None:
        super().__init__(batch_size=batch_size, postprocess=postprocess, seed=seed)
        _check_labels(local_k, k)
        if stages not in (1, 2):
            raise ValueError(f"stages must be 1 or 2, got {stages}")
        self.local_k, self.num_clusters, self.stages = int(local_k), int(k), int(stages)
        self.colour_space, self.xy_weight = colour_space, float(xy_weight)
        self.samples, self.iters, self.global_iters, self.restarts = (
            samples_per_image,
            iters,
            global_iters,
            restarts,
        )
        self.device = torch.device(device)
        self.model = model.eval().to(self.device) if model is not None else None
        self.feature_weight = float(feature_weight)
        self.global_centers: torch.Tensor | None = None
        pixel_features(np.zeros((1, 1, 3), np.uint8), colour_space)  # validate the name now

    @property
    def num_labels(self) -> int:
        return self.num_clusters

    def _features(self, image: np.ndarray) -> torch.Tensor:
        feats = pixel_features(image, self.colour_space, self.xy_weight).to(self.device)
        if self.model is None:
            return feats
        dense = dense_outputs(self.model, normalize(image)[None].to(self.device)).features
        dense = F.interpolate(dense, size=image.shape[:2], mode="bilinear", align_corners=False)
        return torch.cat([feats, self.feature_weight * dense[0].flatten(1).T], dim=1)

    def local(self, images: Sequence[np.ndarray], indices: Sequence[int]) -> list[State]:
        # one generator per batch, seeded by its first image: batches are fixed slices of the id
        # list, so a resumed run recomputes a batch exactly.
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(indices[0]))
        feats = [self._features(im) for im in images]
        if self.samples is None:  # every pixel, as the seed: one problem per image (sizes differ)
            batches = [f[None] for f in feats]
        else:
            picks = [torch.randint(len(f), (self.samples,), generator=gen).to(self.device) for f in feats]
            batches = [torch.stack([f[p] for f, p in zip(feats, picks, strict=True)])]  # [B,P,D]
        if self.stages == 1:
            return [{"centers": s.cpu().numpy()} for batch in batches for s in batch]
        centers = torch.cat(
            [kmeans(b, self.local_k, iters=self.iters, generator=gen).centers for b in batches]
        )
        states = []
        for image, f, c in zip(images, feats, centers, strict=True):
            labels = assign(f, c).view(image.shape[:2]).to(torch.uint8).cpu().numpy()
            states.append({"labels": labels, "centers": c.cpu().numpy()})
        return states

    def fit(self, states: Sequence[State], load_image: object = None) -> None:
        points = torch.from_numpy(np.concatenate([s["centers"] for s in states])).to(self.device)
        if len(points) < self.num_clusters:
            raise ValueError(f"only {len(points)} points for {self.num_clusters} global clusters")
        gen = torch.Generator().manual_seed(self.seed)
        # restarts solved as one batched problem; keep the lowest inertia (sklearn's n_init)
        res = kmeans(
            points.expand(self.restarts, -1, -1), self.num_clusters, iters=self.global_iters, generator=gen
        )
        self.global_centers = res.centers[int(res.inertia.argmin())]

    def fit_state(self) -> State:
        assert self.global_centers is not None, "fit() first"
        return {"global_centers": self.global_centers.cpu().numpy()}

    def load_fit_state(self, state: State) -> None:
        self.global_centers = torch.from_numpy(state["global_centers"]).to(self.device)

    def finalize_raw(self, image: np.ndarray, state: State) -> np.ndarray:
        if self.global_centers is None:
            raise RuntimeError("TorchKMeansPrior.finalize before fit")
        if self.stages == 1:
            return (
                assign(self._features(image), self.global_centers)
                .view(image.shape[:2])
                .to(torch.uint8)
                .cpu()
                .numpy()
            )
        lut = (
            assign(torch.from_numpy(state["centers"]).to(self.device), self.global_centers)
            .to(torch.uint8)
            .cpu()
            .numpy()
        )
        return lut[state["labels"]]
