"""DINO / DINOv2 ViTs: their key layouts, dense features at any size, exact loading of their files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from usgs.nets.backbones import backbone
from usgs.nets.deeplab import DeepLabV3
from usgs.nets.vit import VIT_SPECS, interpolate_pos_embed, vit

DINO_BLOCK = {f"blocks.0.{k}" for k in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                                         "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                                         "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")}
DINO_TOP = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}


def test_dino_and_dinov2_key_layouts() -> None:
    keys = set(vit("vit_small_patch16").state_dict())
    assert keys >= DINO_TOP | DINO_BLOCK and len(keys) == len(DINO_TOP) + 12 * len(DINO_BLOCK)
    spec = VIT_SPECS["vit_base_patch8"]  # ViT-B/8: 768 wide, 12 heads, 28x28 grid at 224 px
    assert (spec.embed_dim, spec.num_heads, spec.patch_size, spec.img_size) == (768, 12, 8, 224)
    v2 = vit("vit_small_patch14_reg4_dinov2").state_dict()
    extra = {"mask_token", "register_tokens", "blocks.0.ls1.gamma", "blocks.0.ls2.gamma"}
    assert extra <= set(v2) and v2["pos_embed"].shape == (1, 1370, 384) and v2["register_tokens"].shape == (1, 4, 384)
    assert "register_tokens" not in vit("vit_small_patch14_dinov2").state_dict()


@pytest.mark.parametrize("name", ["vit_small_patch16", "vit_small_patch14_reg4_dinov2"])
def test_dense_features_at_any_size(name: str) -> None:
    net = vit(name).eval()
    p = VIT_SPECS[name].patch_size
    with torch.no_grad():
        out = net(torch.randn(2, 3, 3 * p, 5 * p + 3))
    assert out["features"].shape == (2, 384, 3, 5) and out["cls"].shape == (2, 384)
    keys = vit(name, feature="keys")
    keys.load_state_dict(net.state_dict())
    with torch.no_grad():
        k = keys.eval()(torch.randn(1, 3, 2 * p, 2 * p))["features"]
    assert k.shape == (1, 384, 2, 2)


def test_pos_embed_interpolation_is_identity_at_native_size() -> None:
    pos = torch.randn(1, 1 + 14 * 14, 8)
    assert torch.equal(interpolate_pos_embed(pos, (14, 14)), pos)
    # a grid that varies linearly along each axis stays linear when resampled: the class token is kept
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    lin = torch.cat([torch.zeros(1, 1, 2), torch.stack([ys, xs], -1).reshape(1, 16, 2)], dim=1)
    out = interpolate_pos_embed(lin, (4, 6))
    assert out.shape == (1, 25, 2) and torch.equal(out[:, 0], lin[:, 0])
    grid = out[0, 1:].reshape(4, 6, 2)
    assert torch.all(grid[:, 1:, 1] > grid[:, :-1, 1]) and torch.allclose(grid[:, :, 0], ys[:, :1].expand(4, 6), atol=1e-4)
    # the full model at the native size gives what an explicit native-size embedding gives
    net = vit("vit_small_patch16").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        t = net.patch_embed(x)
        tokens = torch.cat([net.cls_token, t], 1) + net.pos_embed
        for block in net.blocks:
            tokens, _ = block(tokens)
        ref = net.norm(tokens)[:, 1:].transpose(1, 2).reshape(1, 384, 14, 14)
        assert torch.allclose(net(x)["features"], ref, atol=1e-5)


def test_dinov2_file_and_backbone_only_file_load_exactly(tmp_path: Path) -> None:
    for name in ("vit_small_patch14_reg4_dinov2", "vit_small_patch8"):
        source = vit(name)
        path = tmp_path / f"{name}.pth"
        torch.save(source.state_dict(), path)
        target = vit(name, weights=str(path))
        assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())
    with pytest.raises(ValueError, match="pos_embed"):  # a patch-16 file into a patch-8 model
        torch.save(vit("vit_small_patch16").state_dict(), tmp_path / "p16.pth")
        vit("vit_small_patch8", weights=str(tmp_path / "p16.pth"))


def test_selected_by_name_in_deeplab_and_unknown_names_listed() -> None:
    net = DeepLabV3(num_classes=4, backbone="vit_small_patch16", aspp_rates=(1, 2, 3)).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 48, 64)).shape == (1, 4, 48, 64)
        assert net.features(torch.randn(1, 3, 48, 64)).shape == (1, 256, 3, 4)
    with pytest.raises(ValueError, match="vit_small_patch16") as error:
        backbone("vit_tiny_patch16")
    assert "resnet50" in str(error.value) and "vit_base_patch14_dinov2" in str(error.value)
