"""Foreground (saliency) priors: a classical label-free method, its self-trained refinement, and a
supervised saliency network applied to a target dataset. All end with MaskContrast's post-process.

Unsupervised: "robust background detection" (Zhu et al., CVPR 2014): SLIC-like superpixels (batched
torch k-means on Lab + position from a regular grid), boundary connectivity of each superpixel
(how much of its geodesic-colour "area" touches the image border) as a background probability,
background-weighted contrast as a foreground cue, and the paper's least-squares optimisation that
smooths the two. Optionally (DeepUSPS idea, Nguyen et al. 2019, where MaskContrast's unsupervised
masks came from) a small network is self-trained on those maps and its predictions are used instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from torch import nn
from torch.nn import functional as F

from usgs.data.transforms import normalize
from usgs.nets.kmeans import kmeans
from usgs.priors.base import ImageLoader, MaskPrior, PostProcess, State
from usgs.priors.crf import MASKCONTRAST_CRF, dense_crf
from usgs.priors.saliency_net import predict_saliency, train_saliency_net

__all__ = [
    "saliency_postprocess",
    "boundary_saliency",
    "UnsupervisedSaliencyPrior",
    "SupervisedSaliencyPrior",
]

IGNORE = 255


def saliency_postprocess(
    prob: np.ndarray, threshold: float = 0.5, min_component: float = 0.01, min_foreground: float = 0.01
) -> np.ndarray:
    """MaskContrast's post-process of a foreground probability map float [H,W] -> uint8 [H,W].

    Threshold at 0.5, drop foreground components under 1% of the image, and return an all-255
    map ("no proposal") when under 1% of the image remains foreground.
    """
    fg = (prob >= threshold).astype(np.uint8)
    count, comp, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_component * fg.size) + 1
    if small.size:
        fg[np.isin(comp, small)] = 0
    if fg.mean() < min_foreground:
        return np.full_like(fg, IGNORE)
    return fg


def _superpixels(
    images: Sequence[np.ndarray], size: int, grid: int, compactness: float
) -> tuple[np.ndarray, np.ndarray]:
    """Superpixel labels int [B,size,size] and Lab images float [B,size,size,3] (L 0..100)."""
    labs = np.stack(
        [
            cv2.cvtColor(
                cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0,
                cv2.COLOR_RGB2LAB,
            )
            for im in images
        ]
    )
    ys, xs = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    xy = np.stack([xs, ys], -1)[None].repeat(len(images), 0) * compactness
    feats = torch.from_numpy(np.concatenate([labs / 100.0, xy], -1).reshape(len(images), -1, 5)).float()
    # SLIC seeding: centres on a regular grid (deterministic, no random init)
    centres = ((np.arange(grid) + 0.5) * size / grid).astype(int)
    seed_idx = torch.from_numpy((centres[:, None] * size + centres[None]).reshape(-1))
    res = kmeans(feats, grid * grid, iters=10, init=feats[:, seed_idx])
    return res.labels.view(len(images), size, size).numpy(), labs


def boundary_saliency(
    labels: np.ndarray,
    lab: np.ndarray,
    sigma_clr: float = 10.0,
    sigma_bnd: float = 1.0,
    sigma_spa: float = 0.25,
    mu: float = 0.1,
) -> np.ndarray:
    """Foreground probability per pixel float [h,w] from superpixel ``labels`` [h,w] and ``lab`` [h,w,3].

    Constants are Zhu et al. 2014's: sigma_clr 10 (Lab units), sigma_bndCon 1, sigma_spa 0.25 (of
    the image size), mu 0.1 in the smoothness weights.
    """
    h, w = labels.shape
    _, labels = np.unique(labels, return_inverse=True)
    labels = labels.reshape(h, w)
    n = int(labels.max()) + 1
    count = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    colour = (
        np.stack([np.bincount(labels.ravel(), lab[..., c].ravel(), n) for c in range(3)], 1) / count[:, None]
    )
    ys, xs = np.mgrid[0:h, 0:w]
    pos = (
        np.stack(
            [np.bincount(labels.ravel(), xs.ravel() / w, n), np.bincount(labels.ravel(), ys.ravel() / h, n)],
            1,
        )
        / count[:, None]
    )
    pairs = np.concatenate(
        [
            np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
            np.stack([labels[:-1].ravel(), labels[1:].ravel()], 1),
        ]
    )
    pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], 1), axis=0)
    d_app = np.linalg.norm(colour[:, None] - colour[None], axis=-1)
    edge = d_app[pairs[:, 0], pairs[:, 1]] + 1e-6
    graph = coo_matrix((edge, (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
    d_geo = dijkstra(graph, directed=False)
    d_geo[~np.isfinite(d_geo)] = d_geo[np.isfinite(d_geo)].max()
    spread = np.exp(-(d_geo**2) / (2 * sigma_clr**2))
    border = np.zeros(n, bool)
    border[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = True
    bnd_con = spread[:, border].sum(1) / np.sqrt(spread.sum(1))
    w_bg = 1 - np.exp(-(bnd_con**2) / (2 * sigma_bnd**2))
    d_spa = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    w_ctr = (d_app * np.exp(-(d_spa**2) / (2 * sigma_spa**2)) * w_bg[None]).sum(1)
    w_fg = (w_ctr - w_ctr.min()) / max(np.ptp(w_ctr), 1e-12)
    # least squares: sum w_bg s^2 + sum w_fg (s-1)^2 + sum_adjacent w_ij (s_i - s_j)^2
    w_ij = np.exp(-(edge**2) / (2 * sigma_clr**2)) + mu
    smooth = coo_matrix((w_ij, (pairs[:, 0], pairs[:, 1])), shape=(n, n)).toarray()
    smooth = smooth + smooth.T
    system = np.diag(w_bg + w_fg + smooth.sum(1)) - smooth
    s = np.clip(np.linalg.solve(system, w_fg), 0, 1)
    return s[labels]


class UnsupervisedSaliencyPrior(MaskPrior):
    """Label-free foreground prior: boundary-connectivity saliency, optionally self-trained.

    Args:
        size: images are resized to size x size for superpixels (saliency is an object-level cue).
        grid: grid x grid superpixels.
        compactness: weight of position vs Lab colour (/100) in the superpixel k-means.
        threshold 0.65 is the best foreground IoU on the Weizmann VAL split of a 0.30-0.80 grid
        (``bench/sweep_priors.py saliency``; the classical map is less peaked than a net's softmax).
        64 px, 8x8 and compactness 3 were picked earlier on 100 Weizmann images (20 of them now in
        test) and were not re-swept on val.
        crf: refine each map with the dense CRF (MaskContrast's parameters) before thresholding.
        self_train_steps: > 0 trains a small saliency net for that many steps on the maps (DeepUSPS)
            and uses its predictions.
        threshold, min_component, min_foreground: MaskContrast's post-process (1%, 1%; MaskContrast
            thresholds its net's output at 0.5).
    """

    kind = "saliency"
    parallel = True

    def __init__(
        self,
        size: int = 64,
        grid: int = 8,
        compactness: float = 3.0,
        crf: bool = False,
        self_train_steps: int = 0,
        self_train_size: int = 96,
        threshold: float = 0.65,
        min_component: float = 0.01,
        min_foreground: float = 0.01,
        batch_size: int = 16,
        postprocess: PostProcess | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, postprocess=postprocess, seed=seed)
        self.size, self.grid, self.compactness, self.crf = size, grid, compactness, crf
        self.self_train_steps, self.self_train_size = self_train_steps, self_train_size
        self.threshold, self.min_component, self.min_foreground = threshold, min_component, min_foreground
        self.needs_fit = self_train_steps > 0
        self.net: nn.Module | None = None

    @property
    def num_labels(self) -> int:
        return 2

    def local(self, images: Sequence[np.ndarray], indices: Sequence[int]) -> list[State]:
        labels, labs = _superpixels(images, self.size, self.grid, self.compactness)
        states = []
        for image, lab_map, lab in zip(images, labels, labs, strict=True):
            small = boundary_saliency(lab_map, lab)
            prob = cv2.resize(small.astype(np.float32), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
            if self.crf:
                prob = dense_crf(image, np.stack([1 - prob, prob]), **MASKCONTRAST_CRF)[1]  # type: ignore[arg-type]
            states.append({"prob": np.round(prob * 255).astype(np.uint8)})
        return states

    def fit(self, states: Sequence[State], load_image: ImageLoader) -> None:
        images = [load_image(i) for i in range(len(states))]
        targets = [s["prob"].astype(np.float32) / 255.0 for s in states]
        self.net = train_saliency_net(
            images, targets, steps=self.self_train_steps, size=self.self_train_size, seed=self.seed
        )

    def fit_state(self) -> State:
        assert self.net is not None, "fit() first"
        return {k: v.numpy() for k, v in self.net.state_dict().items()}

    def load_fit_state(self, state: State) -> None:
        self.net = train_saliency_net([], [], steps=0, size=self.self_train_size, seed=self.seed)
        self.net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})

    def finalize_raw(self, image: np.ndarray, state: State) -> np.ndarray:
        if self.net is not None:
            prob = predict_saliency(self.net, image, self.self_train_size)
        else:
            prob = state["prob"].astype(np.float32) / 255.0
        return saliency_postprocess(prob, self.threshold, self.min_component, self.min_foreground)


class SupervisedSaliencyPrior(MaskPrior):
    """A trained 2-class segmentation net (``train.py experiment=saliency_weizmann``) as a foreground prior.

    ``model``: image float [B,3,H,W] (ImageNet-normalised) -> logits [B,2,H,W] (class 1 = foreground);
    images are resized to ``size`` x ``size``, the foreground softmax is resized back, then
    MaskContrast's post-process (threshold 0.5, components < 1%, < 1% foreground -> no proposal).
    """

    kind = "saliency"

    def __init__(
        self,
        model: nn.Module,
        size: int = 128,
        threshold: float = 0.5,
        min_component: float = 0.01,
        min_foreground: float = 0.01,
        device: str = "cpu",
        batch_size: int = 16,
        postprocess: PostProcess | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, postprocess=postprocess, seed=seed)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.size, self.threshold, self.min_component, self.min_foreground = (
            size,
            threshold,
            min_component,
            min_foreground,
        )

    @property
    def num_labels(self) -> int:
        return 2

    @torch.no_grad()
    def local(self, images: Sequence[np.ndarray], indices: Sequence[int]) -> list[State]:
        batch = torch.stack(
            [
                normalize(cv2.resize(im, (self.size, self.size), interpolation=cv2.INTER_LINEAR))
                for im in images
            ]
        ).to(self.device)
        fg = F.softmax(self.model(batch), dim=1)[:, 1:2]
        states = []
        for image, p in zip(images, fg, strict=True):
            prob = F.interpolate(p[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
            states.append({"prob": np.round(prob.cpu().numpy() * 255).astype(np.uint8)})
        return states

    def finalize_raw(self, image: np.ndarray, state: State) -> np.ndarray:
        return saliency_postprocess(
            state["prob"].astype(np.float32) / 255.0, self.threshold, self.min_component, self.min_foreground
        )
