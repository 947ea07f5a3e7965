"""Vision Transformers in the key layouts of DINO and DINOv2, returning dense patch features.

DINO (Caron et al., ICCV 2021) releases ViT-S/B with patch 8 and 16; DINOv2 (Oquab et al., 2023)
ViT-S/B with patch 14, LayerScale and optionally register tokens (Darcet et al., ICLR 2024). The
module names here are theirs (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.N.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2`` [``ls1.gamma``/``ls2.gamma``],
``norm`` [``mask_token``, ``register_tokens``]), so their backbone files load exactly with
:func:`usgs.nets.weights.load_weights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from usgs.nets.weights import load_weights

FeatureKind = Literal["tokens", "keys"]


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection; also returns the keys."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        keys = k.transpose(1, 2).reshape(b, n, c)  # heads concatenated, as STEGO's "KK" features
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), keys


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """DINOv2's per-channel residual scale (``gamma``; CaiT, Touvron et al. 2021)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block; LayerNorm eps 1e-6 as in both releases."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layer_scale: float | None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls1: nn.Module = nn.Identity() if layer_scale is None else LayerScale(dim, layer_scale)
        self.ls2: nn.Module = nn.Identity() if layer_scale is None else LayerScale(dim, layer_scale)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        attended, keys = self.attn(self.norm1(x))
        x = x + self.ls1(attended)
        return x + self.ls2(self.mlp(self.norm2(x))), keys


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def interpolate_pos_embed(pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resample the patch part of ``pos_embed [1,1+N,C]`` (square native grid) to ``grid`` (h, w).

    Bicubic, as DINO and DINOv2; at the native grid the embedding is returned unchanged.
    """
    n = pos_embed.shape[1] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"pos_embed has {n} patch positions, not a square grid")
    if grid == (side, side):
        return pos_embed
    patch = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    patch = F.interpolate(patch, size=grid, mode="bicubic", align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], patch], dim=1)


class VisionTransformer(nn.Module):
    """ViT backbone (Dosovitskiy et al., ICLR 2021) in DINO / DINOv2 layout.

    ``forward(x [B,3,H,W]) -> {"features": [B,C,H/p,W/p], "cls": [B,C]}``: the final-normed patch
    tokens as a map (``feature="keys"``: the last block's attention keys instead, as STEGO's "KK"
    option and Deep Spectral Methods use). H and W need not be the training size: the position
    embedding is interpolated; pixels beyond a multiple of ``p`` are dropped by the patch convolution.
    """

    out_key = "features"

    def __init__(self, patch_size: int = 16, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, img_size: int = 224, layer_scale: float | None = None,
                 num_register_tokens: int = 0, mask_token: bool = False, feature: FeatureKind = "tokens") -> None:
        super().__init__()
        if feature not in ("tokens", "keys"):
            raise ValueError(f"feature must be 'tokens' or 'keys', got {feature!r}")
        self.patch_size = patch_size
        self.feature = feature
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img_size // patch_size) ** 2, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) \
            if num_register_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim)) if mask_token else None  # DINOv2 files hold it
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, layer_scale) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.feature_map = nn.Identity()  # no weights: the hook point of the dense map (Grad-CAM's layer)
        self.channels = {self.out_key: embed_dim}
        self.output_stride = patch_size
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def tokens(self, x: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """``(normed tokens [B,1+R+hw,C], last-block keys [B,1+R+hw,C], (h, w))``."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if min(grid) < 1:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than one {self.patch_size}px patch")
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], dim=1)
        t = t + interpolate_pos_embed(self.pos_embed, grid)
        if self.register_tokens is not None:  # after the position embedding, as DINOv2 inserts them
            t = torch.cat([t[:, :1], self.register_tokens.expand(len(t), -1, -1), t[:, 1:]], dim=1)
        keys = t
        for block in self.blocks:
            t, keys = block(t)
        return self.norm(t), keys, grid

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        tokens, keys, (h, w) = self.tokens(x)
        skip = 1 + (0 if self.register_tokens is None else self.register_tokens.shape[1])
        dense = (keys if self.feature == "keys" else tokens)[:, skip:]
        features = self.feature_map(dense.transpose(1, 2).reshape(len(x), -1, h, w))
        return {self.out_key: features, "cls": tokens[:, 0]}


@dataclass(frozen=True)
class ViTSpec:
    patch_size: int
    embed_dim: int
    num_heads: int
    img_size: int
    layer_scale: float | None = None  # DINOv2: LayerScale (init 1e-5 in its hub models)
    num_register_tokens: int = 0
    mask_token: bool = False


_DINO = {"small": (384, 6), "base": (768, 12)}
VIT_SPECS: dict[str, ViTSpec] = {
    f"vit_{size}_patch{p}": ViTSpec(p, dim, heads, 224) for size, (dim, heads) in _DINO.items() for p in (8, 16)
}
# DINOv2 trains at 518 px: a 37x37 patch grid (1370 positions with the class token).
VIT_SPECS |= {f"vit_{size}_patch14_dinov2": ViTSpec(14, dim, heads, 518, 1e-5, 0, True)
              for size, (dim, heads) in _DINO.items()}
VIT_SPECS |= {f"vit_{size}_patch14_reg4_dinov2": ViTSpec(14, dim, heads, 518, 1e-5, 4, True)
              for size, (dim, heads) in _DINO.items()}


def vit(name: str = "vit_small_patch16", weights: str | None = None, weights_strict: bool = True,
        feature: FeatureKind = "tokens") -> VisionTransformer:
    """Build a DINO / DINOv2 ViT by name, optionally loading a local weight file (any supported layout)."""
    if name not in VIT_SPECS:
        raise ValueError(f"Unknown ViT {name!r}; valid names: {', '.join(sorted(VIT_SPECS))}")
    s = VIT_SPECS[name]
    net = VisionTransformer(s.patch_size, s.embed_dim, 12, s.num_heads, img_size=s.img_size,
                            layer_scale=s.layer_scale, num_register_tokens=s.num_register_tokens,
                            mask_token=s.mask_token, feature=feature)
    if weights:
        load_weights(net, weights, strict=weights_strict)
    return net
