"""PixelFeatures reads equal those of the explicitly upsampled (and normalised) map, F.interpolate's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from usgs.evaluation.pixel_features import PixelFeatures, interpolation_matrix

# (coarse h, w) -> (image H, W): a ResNet's stride 32 at VOC size, a single cell, the same size,
# a ViT-S/8 at 320, odd ratios and a downsampling read.
SIZES = [(12, 16, 375, 500), (1, 1, 7, 9), (5, 3, 5, 3), (40, 40, 320, 320), (7, 5, 20, 11), (9, 9, 4, 4)]


@pytest.mark.parametrize("h,w,big_h,big_w", SIZES)
@pytest.mark.parametrize("unit", [False, True])
def test_reads_equal_the_upsampled_map(h: int, w: int, big_h: int, big_w: int, unit: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, h, w)
    up = F.interpolate(x, size=(big_h, big_w), mode="bilinear", align_corners=False)
    dense = F.normalize(up, dim=1) if unit else up
    features = PixelFeatures(x, (big_h, big_w), unit)
    assert features.shape == (2, 6, big_h, big_w)
    torch.testing.assert_close(features.dense(), dense, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(features.upsampled_norms(), up.norm(dim=1), atol=1e-4, rtol=1e-4)
    index = torch.randint(0, big_h * big_w, (2, 50))
    expected = dense.flatten(2).gather(2, index.unsqueeze(1).expand(-1, 6, -1)).permute(0, 2, 1)
    torch.testing.assert_close(features.gather(index), expected, atol=1e-4, rtol=1e-4)
    weight, bias = torch.randn(4, 6), torch.randn(4)
    torch.testing.assert_close(features.linear(weight, bias),
                               torch.einsum("kd,bdhw->bkhw", weight, dense) + bias.view(1, -1, 1, 1),
                               atol=1e-4, rtol=1e-4)
    weights = torch.rand(2, 3, big_h, big_w)
    torch.testing.assert_close(features.pool(weights), torch.einsum("bmhw,bdhw->bmd", weights, dense),
                               atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(features.image(1).dense(), dense[1:], atol=1e-4, rtol=1e-4)
    assert torch.equal(features.normalized().dense(), features.normalized().dense())


def test_interpolation_matrix_rows_are_two_tap_bilinear_weights() -> None:
    a = interpolation_matrix(2, 4)
    # align_corners=False, 2 -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (upper tap clamped)
    expected = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    torch.testing.assert_close(a, expected)


def test_a_full_size_tensor_is_read_as_it_is() -> None:
    x = torch.randn(1, 3, 4, 5)
    features = PixelFeatures.of(x)
    assert torch.equal(features.dense(), x) and PixelFeatures.of(features) is features
    with pytest.raises(ValueError, match=r"\[B,D,h,w\]"):
        PixelFeatures(torch.zeros(3, 4, 5), (4, 5))
