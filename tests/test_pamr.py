"""PAMR (Araslanov & Roth, CVPR 2020): hand-computed propagation and edge-awareness."""

from __future__ import annotations

import torch

from usgs.nets.pamr import PAMR


def test_uniform_image_spreads_mass_to_the_eight_neighbours() -> None:
    image = torch.full((1, 3, 7, 7), 0.5)
    mask = torch.zeros(1, 1, 7, 7)
    mask[0, 0, 3, 3] = 1.0
    out = PAMR(num_iter=1, dilations=(1,))(image, mask)[0, 0]
    expected = torch.zeros(7, 7)
    expected[2:5, 2:5] = 1.0 / 8.0  # flat image -> uniform affinity over the 8 neighbours
    expected[3, 3] = 0.0  # PAMR never looks at the pixel itself
    torch.testing.assert_close(out, expected)


def test_dilation_two_reaches_two_pixels_away() -> None:
    image = torch.zeros(1, 3, 9, 9)
    mask = torch.zeros(1, 1, 9, 9)
    mask[0, 0, 4, 4] = 1.0
    out = PAMR(num_iter=1, dilations=(2,))(image, mask)[0, 0]
    assert out[2, 2] == out[4, 6] == 1.0 / 8.0
    assert out[3, 3] == 0.0 and out.sum() == 1.0


def test_probabilities_stay_probabilities() -> None:
    torch.manual_seed(0)
    image = torch.rand(2, 3, 20, 24)
    mask = torch.softmax(torch.randn(2, 4, 10, 12), dim=1)
    out = PAMR()(image, mask)
    assert out.shape == mask.shape
    torch.testing.assert_close(out.sum(1), torch.ones(2, 10, 12))
    assert out.min() >= 0


def test_refinement_does_not_cross_a_colour_edge() -> None:
    image = torch.zeros(1, 3, 12, 12)
    image[..., 6:] = 1.0  # dark left half, bright right half
    mask = torch.full((1, 2, 12, 12), 0.5)
    mask[0, :, :, :3] = torch.tensor([1.0, 0.0])[:, None, None]  # confident class 0 far left
    out = PAMR(num_iter=10, dilations=(1,))(image, mask)
    # Within the dark half the confident seed spreads right ...
    assert out[0, 0, :, 4].min() > 0.6
    # ... but no mass crosses the edge: the bright half only averages its own 0.5 values.
    torch.testing.assert_close(out[0, :, :, 7:], torch.full((2, 12, 5), 0.5))
