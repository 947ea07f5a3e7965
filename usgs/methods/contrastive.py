"""MaskContrast's loss pieces: mask prototypes, the prototype queue, the pixel-to-prototype
contrastive logits, balanced BCE and the cross-process gathers they need.

Van Gansbeke et al., "Unsupervised Semantic Segmentation by Contrasting Object Mask Proposals",
ICCV 2021. Shapes: B images, D embedding channels, H x W pixels, K queue entries, P salient pixels.
All functions are device-agnostic and work unchanged on CPU (gloo) and GPU (nccl) process groups.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = 255


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate ``x`` [n_r, ...] of every process along dim 0, in rank order (no gradient).

    Local sizes may differ (the last batch of an epoch): every rank pads to the largest size,
    gathers, then drops the padding, so the result has sum_r n_r rows on every rank.
    """
    _, size = world()
    if size == 1:
        return x
    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(c.item()) for c in counts]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


def gathered_offset(local_size: int, device: torch.device) -> int:
    """Row of this rank's first sample in :func:`all_gather_cat`'s output."""
    rank, size = world()
    if size == 1:
        return 0
    sizes = all_gather_cat(torch.tensor([local_size], device=device))
    return int(sizes[:rank].sum().item())


@torch.no_grad()
def shuffle_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """MoCo's shuffling BN (He et al., CVPR 2020): give this rank a random slice of the global batch.

    Returns ``(x_shuffled [n,...], idx_unshuffle)``; with one process it is the identity because the
    BN statistics of a single batch do not depend on its order. Needs equal local batch sizes.
    """
    rank, size = world()
    if size == 1:
        return x, torch.arange(x.shape[0], device=x.device)
    x_all = all_gather_cat(x)
    if x_all.shape[0] != x.shape[0] * size:
        raise ValueError("shuffled BN needs equal batch sizes on every process (use drop_last=True)")
    perm = torch.randperm(x_all.shape[0], device=x.device)
    dist.broadcast(perm, src=0)  # every rank must use the same permutation
    return x_all[perm.view(size, -1)[rank]], torch.argsort(perm)


@torch.no_grad()
def unshuffle_batch(x: Tensor, idx_unshuffle: Tensor) -> Tensor:
    """Undo :func:`shuffle_batch` on the encoder output ``x`` [n,...]."""
    rank, size = world()
    if size == 1:
        return x
    return all_gather_cat(x)[idx_unshuffle.view(size, -1)[rank]]


def mask_prototypes(embeddings: Tensor, saliency: Tensor) -> tuple[Tensor, Tensor]:
    """One L2-normalised prototype per image: the mean embedding inside its saliency mask.

    Args:
        embeddings: [B,D,H,W] (normalised per pixel, as in the paper).
        saliency: [B,H,W] int, 1 = foreground; 0 and 255 (ignore) are excluded.
    Returns:
        prototypes [B,D] (zero rows for images without foreground) and valid [B] bool.
    """
    if embeddings.shape[0] != saliency.shape[0] or embeddings.shape[2:] != saliency.shape[1:]:
        raise ValueError(f"embeddings {tuple(embeddings.shape)} and saliency {tuple(saliency.shape)} differ")
    fg = (saliency == 1).to(embeddings.dtype).flatten(1)  # [B,HW]
    sums = torch.bmm(embeddings.flatten(2), fg.unsqueeze(2)).squeeze(2)  # [B,D]
    valid = fg.sum(1) > 0
    # The mean and the sum normalise to the same unit vector; F.normalize maps zero rows to zero.
    return F.normalize(sums, dim=1), valid


def contrastive_logits(
    query: Tensor,
    saliency: Tensor,
    prototypes: Tensor,
    prototype_valid: Tensor,
    queue: Tensor,
    temperature: float,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Logits of every salient query pixel against all batch prototypes and the queue.

    Args:
        query: [B,D,H,W] L2-normalised query embeddings (this process's images).
        saliency: [B,H,W] 1 = foreground (the only pixels that are queries).
        prototypes: [N,D] key prototypes of the (gathered) batch; this process's image b is row
            ``offset + b``.
        prototype_valid: [N] bool; prototypes of images without foreground are masked to -inf.
        queue: [K,D] negatives (prototypes of earlier batches).
        temperature: softmax temperature (0.5 in the paper).
    Returns:
        logits [P, N+K] and targets [P] (index of each pixel's own image prototype).
    """
    b, d = query.shape[:2]
    fg = saliency == 1  # [B,H,W]
    pixels = query.permute(0, 2, 3, 1)[fg]  # [P,D]
    image_of_pixel = torch.arange(b, device=query.device).view(b, 1, 1).expand_as(fg)[fg]
    l_batch = pixels @ prototypes.t()
    l_batch = l_batch.masked_fill(~prototype_valid.unsqueeze(0), float("-inf"))
    logits = torch.cat([l_batch, pixels @ queue.t()], dim=1) / temperature
    return logits, image_of_pixel + offset


def enet_class_weights(target: Tensor, num_classes: int, c: float = 1.02) -> Tensor:
    """E-Net class weights (Paszke et al., 2016) of one batch: ``w_c = 1 / ln(c + p_c)`` [num_classes].

    ``p_c`` is the fraction of the targets [P] equal to c (0 for absent classes). MaskContrast's
    ``pretrain/utils/train_utils.py`` weights its pixel cross-entropy this way, with the image
    prototypes as the classes: images with few salient pixels are not drowned by large objects.
    """
    freq = torch.bincount(target, minlength=num_classes).to(torch.float32)
    p_class = freq / max(int(target.numel()), 1)
    return 1.0 / torch.log(c + p_class)


def balanced_bce(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Class-balanced binary cross-entropy (Xie & Tu, HED, ICCV 2015), MaskContrast's saliency loss.

    Positives are weighted by the fraction of negatives and vice versa, so a small object is not
    drowned by its background: ``sum(w * bce) / n`` with ``w = n_neg/n`` on positives and
    ``n_pos/n`` on negatives, over the ``n`` non-ignored pixels. logits [B,H,W], target [B,H,W] in
    {0,1,ignore}. Returns 0 (with a gradient path) when every pixel is ignored.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    valid = target != ignore_index
    n = valid.sum()
    if int(n) == 0:
        return logits.sum() * 0.0
    pos = (target == 1) & valid
    neg = (target == 0) & valid
    n_pos = pos.sum().to(logits.dtype)
    n_neg = neg.sum().to(logits.dtype)
    weight = torch.where(pos, n_neg / n, torch.where(neg, n_pos / n, torch.zeros_like(n_pos)))
    bce = F.binary_cross_entropy_with_logits(logits, pos.to(logits.dtype), reduction="none")
    return (weight * bce).sum() / n


class PrototypeQueue(nn.Module):
    """FIFO memory of the last K image prototypes (MoCo's queue, He et al. CVPR 2020).

    Buffer ``queue`` [K,D], initialised with random unit vectors as in MoCo; ``enqueue`` writes
    with wrap-around so any batch size works (the last batch of an epoch is smaller).
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got {size}, {dim}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.queue: Tensor
        self.pointer: Tensor

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Replace the oldest entries with ``keys`` [n,D] (the newest K if n > K)."""
        size = self.queue.shape[0]
        keys = keys.detach().to(self.queue.dtype)[-size:]
        n = keys.shape[0]
        if n == 0:
            return
        idx = (int(self.pointer) + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys
        self.pointer.fill_((int(self.pointer) + n) % size)
