"""Features read at image size while held at the network's resolution.

The evaluation protocols score every pixel of the image, but a frozen backbone's map is 8-32 times
coarser per side. Building the bilinearly upsampled [B,D,H,W] map (and normalising it per pixel)
is what dominated frozen-feature evaluation: at VOC size with a 512-d ResNet-18 map, ~0.8 s of a
~1 s image went to ``F.interpolate`` and ``F.normalize`` of 384 MB tensors, the network itself
0.08 s (cProfile, BENCHMARKS.md "Scale"). Everything the protocols read is linear in the upsampled
map up to the per-pixel norm, so it is computed exactly from the coarse map:

* sampled pixels: the 4-neighbour bilinear combination at those pixels only;
* a linear map ``W f + b`` of the unit features (k-means centres, the linear probe):
  ``up(W x) / ||up(x)||`` with k << D channels upsampled, and ``||up(x)||^2`` per pixel from the
  width-upsampled map and its row Gram terms (bilinear height weights touch two rows);
* weighted sums over pixels (prototypes, segment means): the adjoint of the upsampling applied to
  the weights, ``sum_hw x * A_h^T (w / ||up(x)||) A_w``.

Bilinear weights are those of ``F.interpolate(mode="bilinear", align_corners=False)``: source
coordinate ``(dst + 0.5) * in / out - 0.5`` clamped at 0, neighbours ``floor`` and ``floor + 1``
(clamped to the last row). Results equal the upsampled map's up to float rounding (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NORM_EPS = 1e-12  # F.normalize's default


def _taps(size_in: int, size_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per output position: (lower source index, upper source index, weight of the upper) [out]."""
    src = ((torch.arange(size_out, device=device, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5).clamp_min(0)
    lo = src.floor().long().clamp_max(size_in - 1)
    hi = (lo + 1).clamp_max(size_in - 1)
    return lo, hi, (src - lo).float()


def interpolation_matrix(size_in: int, size_out: int, device: torch.device | None = None) -> Tensor:
    """A [out, in] with ``A @ v`` = 1-d bilinear upsampling of v (``align_corners=False``)."""
    device = device or torch.device("cpu")
    lo, hi, w = _taps(size_in, size_out, device)
    a = torch.zeros(size_out, size_in, device=device)
    rows = torch.arange(size_out, device=device)
    a.index_put_((rows, lo), 1 - w, accumulate=True)
    a.index_put_((rows, hi), w, accumulate=True)
    return a


class PixelFeatures:
    """Dense features of a batch at image size [B,D,H,W], stored as the coarse map [B,D,h,w].

    Reads are exact bilinear upsampling (``F.interpolate``, ``align_corners=False``) of ``coarse``,
    followed, with ``unit``, by per-pixel L2 normalisation (``F.normalize``'s eps). When the coarse map
    already has the image's size nothing is interpolated.
    """

    def __init__(self, coarse: Tensor, size: tuple[int, int] | torch.Size, unit: bool = False) -> None:
        if coarse.dim() != 4:
            raise ValueError(f"PixelFeatures needs a [B,D,h,w] map, got shape {tuple(coarse.shape)}")
        self.coarse = coarse.float()
        self.size = (int(size[0]), int(size[1]))
        self.unit = unit
        self._same = tuple(coarse.shape[-2:]) == self.size
        self._norms: Tensor | None = None

    @classmethod
    def of(cls, features: Tensor | PixelFeatures) -> PixelFeatures:
        """``features`` as PixelFeatures (a full-size [B,D,H,W] tensor is wrapped as it is)."""
        return features if isinstance(features, PixelFeatures) else cls(features, features.shape[-2:])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        b, d = self.coarse.shape[:2]
        return (b, d, *self.size)

    def normalized(self) -> PixelFeatures:
        """The same features, unit length per pixel."""
        if self.unit:
            return self
        out = PixelFeatures(self.coarse, self.size, unit=True)
        out._norms = self._norms
        return out

    def image(self, index: int) -> PixelFeatures:
        """The features of image ``index`` of the batch ([1,D,H,W])."""
        out = PixelFeatures(self.coarse[index:index + 1], self.size, self.unit)
        out._norms = None if self._norms is None else self._norms[index:index + 1]
        return out

    def to(self, device: torch.device) -> PixelFeatures:
        out = PixelFeatures(self.coarse.to(device), self.size, self.unit)
        out._norms = None if self._norms is None else self._norms.to(device)
        return out

    def _matrices(self) -> tuple[Tensor, Tensor]:
        h, w = self.coarse.shape[-2:]
        device = self.coarse.device
        return interpolation_matrix(h, self.size[0], device), interpolation_matrix(w, self.size[1], device)

    def _upsample(self, x: Tensor) -> Tensor:
        """[..., h, w] -> [..., H, W] (the bilinear map of any channels)."""
        if self._same:
            return x
        a_h, a_w = self._matrices()
        return a_h @ x @ a_w.t()

    def upsampled_norms(self) -> Tensor:
        """||up(coarse)|| per pixel [B,H,W] (before any normalisation)."""
        if self._norms is not None:
            return self._norms
        x = self.coarse
        if self._same:
            norms = x.pow(2).sum(1).sqrt()
        else:
            h = x.shape[-2]
            _, a_w = self._matrices()
            z = x @ a_w.t()  # width upsampled: [B,D,h,W]
            same_row = z.pow(2).sum(1)  # ||z[a]||^2: [B,h,W]
            below = (torch.arange(h, device=x.device) + 1).clamp_max(h - 1)
            pair = (z * z[:, :, below]).sum(1)  # <z[a], z[min(a + 1, h - 1)]>: [B,h,W]
            lo, hi, wt = _taps(h, self.size[0], x.device)  # hi = min(lo + 1, h - 1)
            wt = wt.view(1, -1, 1)
            squared = (1 - wt) ** 2 * same_row[:, lo] + wt**2 * same_row[:, hi] + 2 * wt * (1 - wt) * pair[:, lo]
            norms = squared.clamp_min(0).sqrt()
        self._norms = norms
        return norms

    def _inverse_norms(self) -> Tensor | None:
        return self.upsampled_norms().clamp_min(NORM_EPS).reciprocal() if self.unit else None

    def dense(self) -> Tensor:
        """The full map [B,D,H,W] (memory D x H x W per image: for small images and tests)."""
        up = self._upsample(self.coarse)
        return F.normalize(up, dim=1) if self.unit else up

    def gather(self, index: Tensor) -> Tensor:
        """Features at flat pixel positions ``index`` [B,n] (row-major over H x W): [B,n,D]."""
        x = self.coarse
        b, d, h, w = x.shape
        rows, cols = index // self.size[1], index % self.size[1]
        if self._same:
            out = x.flatten(2).gather(2, index.unsqueeze(1).expand(-1, d, -1))
        else:
            r_lo, r_hi, r_w = (t[rows] for t in _taps(h, self.size[0], x.device))
            c_lo, c_hi, c_w = (t[cols] for t in _taps(w, self.size[1], x.device))
            flat = x.flatten(2)
            out = torch.zeros(b, d, index.shape[1], device=x.device)
            for r, rw in ((r_lo, 1 - r_w), (r_hi, r_w)):
                for c, cw in ((c_lo, 1 - c_w), (c_hi, c_w)):
                    out += (rw * cw).unsqueeze(1) * flat.gather(2, (r * w + c).unsqueeze(1).expand(-1, d, -1))
        out = out.permute(0, 2, 1)
        return F.normalize(out, dim=2) if self.unit else out

    def linear(self, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``weight @ f + bias`` at every pixel: weight [k,D], bias [k] -> [B,k,H,W]."""
        y = self._upsample(torch.einsum("kd,bdhw->bkhw", weight.to(self.coarse), self.coarse))
        inverse = self._inverse_norms()
        if inverse is not None:
            y = y * inverse.unsqueeze(1)
        return y if bias is None else y + bias.to(y).view(1, -1, 1, 1)

    def pool(self, weights: Tensor) -> Tensor:
        """Weighted sums of the pixel features: weights [B,m,H,W] -> [B,m,D] (sum over H x W of w * f)."""
        weights = weights.to(self.coarse)
        inverse = self._inverse_norms()
        if inverse is not None:
            weights = weights * inverse.unsqueeze(1)
        if not self._same:  # the adjoint of the upsampling: A_h^T w A_w
            a_h, a_w = self._matrices()
            weights = a_h.t() @ weights @ a_w
        return torch.einsum("bmhw,bdhw->bmd", weights, self.coarse)
