"""Shared method pieces: poly schedule, EMA, sliding window, overlays."""

from __future__ import annotations

import math

import numpy as np
import torch

from usgs.methods.base import poly_lambda
from usgs.methods.ema import cosine_momentum_schedule, ema_update
from usgs.methods.sliding_window import sliding_window_logits, window_starts
from usgs.visualize import color_palette, colorize, prediction_panel


def test_poly_schedule_endpoints() -> None:
    assert poly_lambda(0, 100, 0.9) == 1.0
    assert math.isclose(poly_lambda(50, 100, 0.9), 0.5**0.9)
    assert poly_lambda(100, 100, 0.9) == 0.0 and poly_lambda(150, 100, 0.9) == 0.0


def test_ema_update_and_cosine_schedule() -> None:
    target, source = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = target.weight.detach().clone()
    ema_update(target, source, momentum=0.9)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * source.weight)
    schedule = cosine_momentum_schedule(0.996, 1.0, 10)
    assert schedule[0].item() == 0.996 and len(schedule) == 10
    assert bool((schedule[1:] >= schedule[:-1]).all()) and schedule[-1] < 1.0


def test_window_starts_cover_the_length() -> None:
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(3, 4, 2) == [0]


def test_sliding_window_equals_full_image_for_a_pointwise_predictor() -> None:
    conv = torch.nn.Conv2d(3, 5, 1)
    image = torch.randn(2, 3, 37, 23)
    with torch.no_grad():
        tiled = sliding_window_logits(conv, image, window=16, stride=10)
        assert tiled.shape == (2, 5, 37, 23)
        assert torch.allclose(tiled, conv(image), atol=1e-5)
        # Zero padding of small images changes nothing inside the image for a 1x1 predictor.
        assert torch.allclose(
            sliding_window_logits(conv, image[..., :8, :8], 16, 8), conv(image[..., :8, :8]), atol=1e-5
        )


def test_prediction_panel_tiles_titles_legend_and_ignore_colour() -> None:
    image = torch.zeros(3, 4, 5)
    mask = torch.tensor([[0, 1, 255, 1, 0]] * 4)
    pred = torch.zeros(4, 5, dtype=torch.long)
    palette = color_palette(2, np.array([[255, 0, 0], [0, 255, 0]], dtype=np.uint8))
    colours = colorize(mask, palette)
    assert colours[0, 0].tolist() == [255, 0, 0] and colours[0, 1].tolist() == [0, 255, 0]
    assert colours[0, 2].tolist() == [128, 128, 128]  # ignore pixels are grey
    panel = prediction_panel([image, image], [mask, mask], [pred, pred], palette, ["sky", "grass"])
    assert panel.dtype == np.uint8
    # two rows of three tiles, each scaled to >= 192 px (4x5 -> 192x240), titles above, legend below
    assert panel.shape[0] > 2 * 192 and panel.shape[1] >= 3 * 240
    red, green = (panel == [255, 0, 0]).all(-1), (panel == [0, 255, 0]).all(-1)
    assert red.sum() > 2 * 192 * 48 and green.sum() > 192 * 48  # solid label colours, nearest neighbour
    first_tile_row = np.nonzero(red.any(1))[0][0]
    assert first_tile_row > 10  # the title line sits above the tiles
    legend = panel[-22:]
    assert (legend == [255, 0, 0]).all(-1).any() and (legend == [0, 255, 0]).all(-1).any()
    no_gt = prediction_panel([image], [None], [pred], palette, ["sky", "grass"])
    assert no_gt.shape[1] < panel.shape[1]  # image | prediction only
