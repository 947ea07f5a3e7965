"""Spectral clustering of feature channels: the ClusterNet layer (diploma thesis, after PSPNet).

Ng, Jordan & Weiss, "On Spectral Clustering: Analysis and an algorithm", NIPS 2001, applied to the
C channels of a feature map: each channel's flattened H*W map is one point. The layer groups the
channels into ``num_clusters`` clusters and returns the mean map of every cluster, so that the
pyramid pooling that follows sees ``num_clusters`` maps instead of C.

The assignment is discrete (eigenvectors + k-means), so it is computed without gradient; the output
is a linear function of the input given the assignment, so gradients reach the backbone through the
cluster means.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from usgs.nets.kmeans import kmeans


def channel_distances(x: Tensor, rms: bool = True) -> Tensor:
    """Root-mean-square difference per pixel (``rms``) or Euclidean distance between channel maps.

    ``x`` [B,C,H,W] -> [B,C,C]. Dividing the Euclidean distance by sqrt(H*W) keeps the affinity's
    threshold / scale independent of the crop size (the thesis used 90x90 maps; tests use 8x8).
    The thesis thresholded the plain Euclidean distance of the 8100-d maps (``rms=False``).
    """
    points = x.flatten(2)
    sq = points.pow(2).sum(-1)
    gram = points @ points.transpose(1, 2)
    sq_dist = (sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * gram).clamp_min(0)
    return (sq_dist / points.shape[-1]).sqrt() if rms else sq_dist.sqrt()


class ThresholdAffinity(nn.Module):
    """Epsilon-neighbourhood graph, A_ij = 1 if d_ij < scale else 0 (the thesis's kind of graph).

    ``scale`` is the distance threshold epsilon (named like :class:`GaussianAffinity`'s sigma so
    that one config key switches the kernel). With the layer4 features batch-normalised (unit
    variance per channel), two channels at RMS distance d have correlation about 1 - d^2/2, so the
    default sqrt(2) (the suite's choice) links exactly the positively correlated channels (at random
    init the median distance is ~sqrt(2), and a threshold of 1.0 linked under 1% of the channel
    pairs). The thesis thresholded ``exp(d) < 2`` on the plain Euclidean distance: scale ln 2 with
    ``SpectralClustering(rms_distance=False)``. d_ii = 0 gives every channel a self-loop, so no
    degree is zero.
    """

    def __init__(self, scale: float = math.sqrt(2)) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"ThresholdAffinity: scale (threshold) must be > 0, got {scale}")
        self.scale = scale

    def forward(self, distances: Tensor) -> Tensor:
        """[B,C,C] distances -> [B,C,C] binary affinity (float)."""
        return (distances < self.scale).to(distances.dtype)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class GaussianAffinity(nn.Module):
    """Gaussian kernel affinity A_ij = exp(-d_ij^2 / (2 scale^2)) (Ng, Jordan & Weiss 2001, eq. 1).

    ``scale`` is sigma in the same RMS-per-pixel units as :func:`channel_distances`.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"GaussianAffinity: scale must be > 0, got {scale}")
        self.scale = scale

    def forward(self, distances: Tensor) -> Tensor:
        """[B,C,C] distances -> [B,C,C] affinity in (0, 1]."""
        return torch.exp(-distances.pow(2) / (2 * self.scale**2))

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


# Diagonal ramp added on the last retry: far below any eigen-gap that matters (and below the
# near-duplicate tolerance of the embedding), large enough to split exactly repeated eigenvalues.
_EIGH_JITTER = 1e-10


def _eigh_vectors(matrix: Tensor) -> Tensor:
    """Eigenvectors of symmetric matrices [B,N,N], columns by ascending eigenvalue.

    LAPACK's divide-and-conquer solver can fail to converge on very degenerate spectra (an
    epsilon-graph with many isolated channels has a Laplacian with many equal eigenvalues; the
    thesis's graph, nearly the identity, is one). Retries: float64, then float64 plus a tiny
    diagonal ramp ``_EIGH_JITTER * i / N``, which splits the repeated eigenvalues (measured here:
    MKL's float64 ``eigh`` failed on such a 512 x 512 Laplacian and converged with the ramp).
    """
    try:
        return torch.linalg.eigh(matrix).eigenvectors
    except torch.linalg.LinAlgError:
        pass
    wide = matrix.double()
    try:
        return torch.linalg.eigh(wide).eigenvectors.to(matrix.dtype)
    except torch.linalg.LinAlgError:
        n = matrix.shape[-1]
        ramp = torch.arange(n, dtype=wide.dtype, device=wide.device) * (_EIGH_JITTER / n)
        return torch.linalg.eigh(wide + torch.diag_embed(ramp)).eigenvectors.to(matrix.dtype)


def spectral_embedding(affinity: Tensor, k: int) -> Tensor:
    """NJW embedding: the k smallest eigenvectors of the normalised Laplacian, rows normalised.

    ``affinity`` [B,N,N] symmetric, non-negative, positive degrees -> [B,N,k].
    L = I - D^-1/2 A D^-1/2; ``torch.linalg.eigh`` returns eigenvalues in ascending order, so the
    first k columns are the k smallest (the thesis used the removed ``torch.eig``).
    """
    n = affinity.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"spectral_embedding: k must be in [1, {n}] (number of points), got {k}")
    inv_sqrt_deg = affinity.sum(-1).clamp_min(torch.finfo(affinity.dtype).tiny).rsqrt()
    normalised = inv_sqrt_deg.unsqueeze(2) * affinity * inv_sqrt_deg.unsqueeze(1)
    eye = torch.eye(n, dtype=affinity.dtype, device=affinity.device)
    u = _eigh_vectors(eye - normalised)[..., :k]
    norms = u.norm(dim=-1, keepdim=True)
    # Rows below sqrt(machine epsilon) are round-off (points outside the span of the k vectors, e.g.
    # isolated channels): they become exact zeros instead of noise blown up to arbitrary lengths.
    tol = torch.finfo(u.dtype).eps ** 0.5
    return torch.where(norms > tol, u / norms.clamp_min(tol), torch.zeros_like(u))


def merge_near_duplicates(points: Tensor, tol: float) -> Tensor:
    """Index of the first point within ``tol`` of each point: [B,N,D] -> int64 [B,N].

    Channels whose graph nodes are interchangeable (identical maps, or all isolated) have the same
    NJW row in exact arithmetic, but the eigen-solver returns any rotation of a degenerate
    eigenspace, so the computed rows differ by round-off that depends on the LAPACK/BLAS build.
    k-means with more clusters than distinct rows would then split such a group along that noise
    (issue 12). Mapping every point to its first near-duplicate makes duplicates one point whatever
    the solver returned. Distances are taken pairwise without the matmul expansion, whose own
    round-off (~sqrt(eps) for unit rows) would be as large as the tolerance.
    """
    distances = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    # argmax returns the first maximal index: the lowest-numbered point within tol (itself at worst).
    return (distances <= tol).to(torch.uint8).argmax(dim=-1)


def canonical_labels(labels: Tensor, num_clusters: int) -> Tensor:
    """Renumber clusters by the first channel they contain: [B,N] -> [B,N].

    k-means label ids are an arbitrary permutation; the layers after this one (BN, PPM) treat each
    output map as a fixed feature, so cluster 0 is always the cluster of channel 0, cluster 1 the
    cluster of the lowest channel not in cluster 0, and so on. This also makes the output
    independent of k-means initialisation order whenever the partition is the same.
    """
    n = labels.shape[1]
    members = nn.functional.one_hot(labels, num_clusters).bool()  # [B,N,K]
    positions = torch.arange(n, device=labels.device).view(1, n, 1)
    # First channel of each cluster (n if empty); a masked min instead of scatter_reduce keeps it
    # deterministic on CUDA under torch.use_deterministic_algorithms.
    first = torch.where(members, positions, n).amin(dim=1)  # [B,K]
    rank = torch.argsort(torch.argsort(first, dim=1, stable=True), dim=1)
    return rank.gather(1, labels)


EmptyFill = Literal["zero", "first_nonempty"]
ClusterItems = Literal["each", "first"]


def cluster_means(x: Tensor, labels: Tensor, num_clusters: int, empty: EmptyFill = "zero") -> Tensor:
    """Mean map of the channels in each cluster: x [B,C,H,W], labels [B,C] -> [B,num_clusters,H,W].

    An empty cluster gives an all-zero map (``empty="zero"``; its count is clamped to 1, so no NaN)
    or a copy of the first non-empty cluster's mean (``"first_nonempty"``, the thesis's
    ``utils/clustering.py``). Shapes never change. Differentiable in ``x``.
    """
    if empty not in ("zero", "first_nonempty"):
        raise ValueError(f"unknown empty-cluster fill {empty!r}; valid: 'zero', 'first_nonempty'")
    one_hot = nn.functional.one_hot(labels, num_clusters).to(x.dtype)
    counts = one_hot.sum(1)
    if empty == "first_nonempty":
        # Empty columns take the first non-empty cluster's members (argmax: first maximal index).
        first = (counts > 0).to(torch.uint8).argmax(dim=1)  # [B]
        fill = one_hot.gather(2, first.view(-1, 1, 1).expand(-1, one_hot.shape[1], 1))  # [B,C,1]
        one_hot = torch.where((counts == 0).unsqueeze(1), fill, one_hot)
        counts = one_hot.sum(1)
    weights = one_hot / counts.clamp_min(1).unsqueeze(1)
    return torch.einsum("bck,bchw->bkhw", weights, x)


class SpectralClustering(nn.Module):
    """ClusterNet's spectral-clustering layer: [B,C,H,W] -> [B,num_clusters,H,W].

    For every item of the batch (batched, no loop over items; the thesis clustered item 0 only):
    channel affinity -> normalised Laplacian -> ``num_eigenvectors`` smallest eigenvectors (default
    ``num_clusters``, as in NJW) -> rows normalised -> k-means (the suite's torch k-means) into
    ``num_clusters`` clusters -> mean map per cluster. Parameter-free; the k-means generator is
    re-seeded from ``seed`` at every call, so a forward pass is deterministic for a given input.

    The thesis's settings (``conf/model/clusternet_thesis.yaml``): ``rms_distance=False`` with
    ``ThresholdAffinity(math.log(2))`` (its ``exp(d) < 2``), ``num_eigenvectors=2``,
    ``cluster_items="first"`` (the assignment of batch item 0 is used for the whole batch; it
    trained with batch size 1), ``empty="first_nonempty"``.
    """

    def __init__(
        self,
        num_clusters: int = 40,
        num_eigenvectors: int | None = None,
        affinity: nn.Module | None = None,
        kmeans_iters: int = 20,
        seed: int = 0,
        rms_distance: bool = True,
        cluster_items: ClusterItems = "each",
        empty: EmptyFill = "zero",
    ) -> None:
        super().__init__()
        if num_clusters < 1:
            raise ValueError(f"SpectralClustering: num_clusters must be >= 1, got {num_clusters}")
        if cluster_items not in ("each", "first"):
            raise ValueError(
                f"SpectralClustering: unknown cluster_items {cluster_items!r}; valid: 'each', 'first'"
            )
        if empty not in ("zero", "first_nonempty"):
            raise ValueError(f"SpectralClustering: unknown empty {empty!r}; valid: 'zero', 'first_nonempty'")
        self.rms_distance = rms_distance
        self.cluster_items = cluster_items
        self.empty = empty
        self.num_clusters = num_clusters
        self.num_eigenvectors = num_eigenvectors or num_clusters
        # An epsilon-graph like the thesis's, on the RMS distance at sqrt(2) (the suite's variant).
        self.affinity = affinity if affinity is not None else ThresholdAffinity()
        self.kmeans_iters = kmeans_iters
        self.seed = seed

    @torch.no_grad()
    def assign(self, x: Tensor) -> Tensor:
        """Cluster id of every channel: [B,C,H,W] -> int64 [B,C] (canonical order, no gradient).

        With ``cluster_items="first"`` only item 0 is clustered and its ids are repeated for the batch.
        """
        b, c = x.shape[:2]
        if c < self.num_clusters:
            raise ValueError(f"SpectralClustering: {c} channels cannot form {self.num_clusters} clusters")
        if self.cluster_items == "first" and b > 1:
            return self.assign(x[:1]).expand(b, -1)
        # eigh needs float32 or float64; half-precision features (AMP) are upcast.
        feats = x.detach().float()
        distances = channel_distances(feats, rms=self.rms_distance)
        embedding = spectral_embedding(self.affinity(distances), self.num_eigenvectors)
        # A CPU generator: the k-means draws on it and moves the numbers, so CPU and GPU runs of the
        # same input get the same seeding.
        # Near-duplicate rows (round-off of a degenerate eigenspace) become exact copies of their
        # first occurrence and always share its cluster, so a group of interchangeable channels is
        # never split and clusters beyond the number of distinct rows stay empty on every machine.
        rep = merge_near_duplicates(embedding, tol=torch.finfo(embedding.dtype).eps ** 0.5)
        embedding = embedding.gather(1, rep.unsqueeze(2).expand_as(embedding))
        generator = torch.Generator().manual_seed(self.seed)
        result = kmeans(embedding, self.num_clusters, iters=self.kmeans_iters, generator=generator)
        return canonical_labels(result.labels.gather(1, rep), self.num_clusters)

    def forward(self, x: Tensor) -> Tensor:
        """[B,C,H,W] -> [B,num_clusters,H,W]; gradients flow through the means to ``x``."""
        return cluster_means(x, self.assign(x), self.num_clusters, self.empty)

    def extra_repr(self) -> str:
        return (
            f"num_clusters={self.num_clusters}, num_eigenvectors={self.num_eigenvectors}, "
            f"kmeans_iters={self.kmeans_iters}, seed={self.seed}, rms_distance={self.rms_distance}, "
            f"cluster_items={self.cluster_items!r}, empty={self.empty!r}"
        )
