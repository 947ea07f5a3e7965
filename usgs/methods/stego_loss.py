"""STEGO's contrastive correlation loss (Hamilton et al., ICLR 2022), written from its code.

Source: ``mhamilton723/STEGO src/modules.py`` @ 8c1ad0a9 (``tensor_correlation``, ``sample``,
``super_perm``, ``ContrastiveCorrelationLoss.helper`` / ``forward``, lines 283-398). The feature
correlation ``fd`` of the frozen backbone says which pairs of locations should agree; the code
correlation ``cd`` of the trainable head is pushed up where ``fd`` is above ``shift`` and down where
it is below. Three pair sets: an image with itself, with one of its k nearest neighbours, and with
random other images of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """``einsum("nchw,ncij->nhwij")``: every location of ``a [B,C,H,W]`` against every one of ``b``."""
    return torch.einsum("nchw,ncij->nhwij", a, b)


def correlation_loss(f1: Tensor, f2: Tensor, c1: Tensor, c2: Tensor, shift: float, pointwise: bool = True,
                     zero_clamp: bool = True, stabilize: bool = False) -> tuple[Tensor, Tensor]:
    """STEGO's pair term (``ContrastiveCorrelationLoss.helper``, modules.py:325-347).

    Args:
        f1, f2: frozen features ``[B,C,H,W]`` and ``[B,C,H',W']`` (no gradient flows into them).
        c1, c2: codes ``[B,D,H,W]`` and ``[B,D,H',W']`` at the same locations as ``f1``, ``f2``.
        shift: subtracted from the feature correlation (the pair set's ``*_shift``).
        pointwise: centre the feature correlation of each location of ``f1`` over the locations of
            ``f2`` (mean over the last two axes), then add back the global mean removed by it.
        zero_clamp: clamp the code correlation below at 0 (else at -9999, i.e. not at all).
        stabilize: also clamp it above at 0.8 (the original's ``stabalize``).

    Returns:
        ``(loss, cd)``, both ``[B,H,W,H',W']``: ``-clamp(cd) * (fd - shift)`` and the code correlation.
    """
    with torch.no_grad():
        fd = correlation(F.normalize(f1, dim=1, eps=1e-10), F.normalize(f2, dim=1, eps=1e-10))
        if pointwise:
            old_mean = fd.mean()
            fd = fd - fd.mean([3, 4], keepdim=True)
            fd = fd - fd.mean() + old_mean
    cd = correlation(F.normalize(c1, dim=1, eps=1e-10), F.normalize(c2, dim=1, eps=1e-10))
    low = 0.0 if zero_clamp else -9999.0
    clamped = cd.clamp(low, 0.8) if stabilize else cd.clamp(low)
    return -clamped * (fd - shift), cd


def sample_at(t: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of ``t [B,C,H,W]`` at ``coords [B,S,S,2]`` in [-1, 1] (x, y) -> ``[B,C,S,S]``.

    The original transposes the coordinate grid before sampling (``coords.permute(0, 2, 1, 3)``);
    kept, as it only relabels which sample sits where.
    """
    return F.grid_sample(t, coords.permute(0, 2, 1, 3), padding_mode="border", align_corners=True)


def derangement(size: int, generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
    """STEGO's ``super_perm``: a random permutation whose fixed points are moved on by one (mod size),
    so no image is its own negative (the result may repeat an index, as the original's does)."""
    perm = torch.randperm(size, generator=generator).to(device)
    perm[perm == torch.arange(size, device=device)] += 1
    return perm % size


@dataclass
class CorrelationLossWeights:
    """The weights and shifts of the three pair sets (train_config.yml:58-64, STEGO's defaults)."""

    pos_intra_weight: float = 0.67
    pos_inter_weight: float = 0.25
    neg_inter_weight: float = 0.63
    pos_intra_shift: float = 0.18
    pos_inter_shift: float = 0.12
    neg_inter_shift: float = 0.46


def contrastive_correlation_loss(feats: Tensor, feats_pos: Tensor, code: Tensor, code_pos: Tensor,
                                 w: CorrelationLossWeights, feature_samples: int = 11, neg_samples: int = 5,
                                 pointwise: bool = True, zero_clamp: bool = True, stabilize: bool = False,
                                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """``ContrastiveCorrelationLoss.forward`` (modules.py:349-398) without saliency sampling.

    ``feature_samples`` x ``feature_samples`` random locations per image (uniform in [-1, 1], one set
    for the images, one for their neighbours, reused for the negatives); ``neg_samples`` derangements
    of the batch. feats/feats_pos ``[B,C,h,w]``, code/code_pos ``[B,D,h,w]``. Returns the three
    mean pair losses, their mean code correlations and the weighted total (``loss``).
    """
    b, device = feats.shape[0], feats.device
    shape = (b, feature_samples, feature_samples, 2)
    coords1 = (torch.rand(shape, generator=generator) * 2 - 1).to(device)
    coords2 = (torch.rand(shape, generator=generator) * 2 - 1).to(device)
    f, c = sample_at(feats, coords1), sample_at(code, coords1)
    f_pos, c_pos = sample_at(feats_pos, coords2), sample_at(code_pos, coords2)
    kw = dict(pointwise=pointwise, zero_clamp=zero_clamp, stabilize=stabilize)
    intra, intra_cd = correlation_loss(f, f, c, c, w.pos_intra_shift, **kw)
    inter, inter_cd = correlation_loss(f, f_pos, c, c_pos, w.pos_inter_shift, **kw)
    neg, neg_cd = [], []
    for _ in range(neg_samples):
        perm = derangement(b, generator, device)
        loss, cd = correlation_loss(f, sample_at(feats[perm], coords2), c, sample_at(code[perm], coords2),
                                    w.neg_inter_shift, **kw)
        neg.append(loss)
        neg_cd.append(cd)
    out = {"pos_intra": intra.mean(), "pos_inter": inter.mean(), "neg_inter": torch.cat(neg).mean(),
           "cd_pos_intra": intra_cd.mean(), "cd_pos_inter": inter_cd.mean(), "cd_neg_inter": torch.cat(neg_cd).mean()}
    out["loss"] = (w.pos_intra_weight * out["pos_intra"] + w.pos_inter_weight * out["pos_inter"]
                   + w.neg_inter_weight * out["neg_inter"])
    return out
