"""The two-view transform of twin training and the alignment of the two views' pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from usgs.data.transforms import normalize
from usgs.methods.twin_views import TwinViews, align_views

torch.set_num_threads(1)
K = 4  # prior clusters in these tests


def ramp_sample(height: int = 40, width: int = 56) -> dict[str, np.ndarray]:
    """A smooth colour ramp (so resampling errors stay small) with a 2x2-block prior / mask."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    blocks = ((xx >= width // 2).astype(np.uint8) + 2 * (yy >= height // 2)).astype(np.uint8)
    mask = blocks.copy()
    mask[0, 0] = 255
    return {"image": image, "prior": blocks, "mask": mask}


def twin_batch(n: int = 4, seed: int = 0, **views: Any) -> dict[str, Any]:
    torch.manual_seed(seed)
    transform = TwinViews(crop_size=24, **views)
    samples = []
    for i in range(n):
        out = transform(ramp_sample())
        out["image"] = normalize(out["image"])
        out["prior"] = torch.from_numpy(out["prior"]).long()
        out["mask"] = torch.from_numpy(out["mask"]).long()
        samples.append({**out, "index": i})
    return default_collate(samples)


def test_twin_views_keys_and_identity_geometry() -> None:
    batch = twin_batch(2, scale=(1.0, 1.0), hflip=False, photometric=False)
    assert batch["image"].shape == batch["image2"].shape == (2, 3, 24, 24)
    assert batch["prior2"].dtype == torch.int64 and batch["prior2"].shape == (2, 24, 24)
    # whole image, no flip, no colour change: both views are the same pixels
    assert torch.equal(batch["image"], batch["image2"]) and torch.equal(batch["prior"], batch["prior2"])
    assert torch.equal(
        batch["geometry"], torch.tensor([[0, 0, 1, 1, 0]] * 2, dtype=torch.float32).expand(2, 2, 5)
    )


def test_twin_views_flip_and_crop_transform_the_prior_like_the_image() -> None:
    batch = twin_batch(8, seed=3, scale=(0.3, 1.0), photometric=False)
    for i in range(8):
        for key, idx in (("prior", 0), ("prior2", 1)):
            x0, y0, x1, y1, flip = batch["geometry"][i, idx].tolist()
            # the prior's blocks: class 1/3 on the right half of the original image
            right = (batch[key][i] % 2 == 1).float().mean(0)  # fraction per column
            if x0 >= 0.5 or x1 <= 0.5:
                continue
            cols = torch.nonzero(right > 0.5).squeeze(1)
            assert bool(cols[0] == 0) == bool(flip), (key, i)  # flipped views have it on the left


def test_twin_views_are_reproducible_from_torch_seed_and_differ_between_views() -> None:
    a, b = twin_batch(3, seed=7), twin_batch(3, seed=7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image2"], b["image2"])
    assert not torch.equal(a["geometry"][:, 0], a["geometry"][:, 1])


def test_align_views_undoes_a_flip_exactly() -> None:
    ramp = torch.linspace(0, 1, 10).view(1, 1, 1, 10).expand(1, 2, 6, 10).contiguous()
    geometry = torch.tensor([[[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]], dtype=torch.float32)
    a1, a2, overlap = align_views(ramp, ramp.flip(-1), geometry)
    assert overlap.all() and torch.allclose(a1, ramp, atol=1e-6) and torch.allclose(a2, ramp, atol=1e-6)
    _, wrong, _ = align_views(ramp, ramp, geometry)  # not flipped: must NOT match
    assert (wrong - ramp).abs().max() > 0.5


def test_align_views_maps_crops_to_common_pixels() -> None:
    batch = twin_batch(6, seed=1, scale=(0.4, 1.0), photometric=False)
    a1, a2, overlap = align_views(batch["image"], batch["image2"], batch["geometry"])
    assert overlap.all()
    assert (a1 - a2).abs().mean() < 0.03  # a ramp spans ~4 units: this is sub-pixel agreement
    swapped = batch["geometry"].flip(1)
    b1, b2, _ = align_views(batch["image"], batch["image2"], swapped)
    assert (b1 - b2).abs().mean() > 5 * (a1 - a2).abs().mean()
    onehot = lambda m: nn.functional.one_hot(m, K).permute(0, 3, 1, 2).float()  # noqa: E731
    p1, p2, _ = align_views(onehot(batch["prior"]), onehot(batch["prior2"]), batch["geometry"])
    assert (p1.argmax(1) == p2.argmax(1)).float().mean() > 0.9


def test_disjoint_views_have_no_overlap() -> None:
    geometry = torch.tensor([[[0, 0, 0.4, 1, 0], [0.6, 0, 1, 1, 0]]], dtype=torch.float32)
    _, _, overlap = align_views(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), geometry)
    assert not overlap.any()
