"""Joint transforms: ignore stays ignore, no new label values, masks stay aligned with the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usgs.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    denormalize,
    normalize,
)


def _sample(height: int = 48, width: int = 40) -> dict[str, np.ndarray]:
    """Blocky mask with classes {0, 2, 5} and an ignore block; the image marks the ignore block white."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, width // 2 :] = 2
    mask[height // 2 :, : width // 3] = 5
    mask[10:20, 12:30] = 255
    image = np.full((height, width, 3), 60, dtype=np.uint8)
    image[mask == 255] = 255
    saliency = (mask == 5).astype(np.uint8)
    return {"image": image, "mask": mask, "saliency": saliency, "prior": mask.copy()}


def test_train_transform_keeps_label_set_and_ignore_alignment() -> None:
    torch.manual_seed(0)
    transform = TrainTransform(crop_size=32, scale=(0.5, 2.0), hflip=True)
    for _ in range(30):
        out = transform(_sample())
        assert out["image"].shape == (32, 32, 3) and out["mask"].shape == (32, 32)
        assert set(np.unique(out["mask"])) <= {0, 2, 5, 255}
        assert set(np.unique(out["saliency"])) <= {0, 1, 255}
        # every mask-like key gets the same geometry (prior started equal to mask)
        np.testing.assert_array_equal(out["prior"], out["mask"])
        # saliency followed the mask: foreground exactly where class 5 is
        np.testing.assert_array_equal(out["saliency"] == 1, out["mask"] == 5)


def test_unit_scale_crop_keeps_ignore_pixels_in_place_and_pads_with_ignore() -> None:
    torch.manual_seed(1)
    transform = TrainTransform(crop_size=(56, 44), scale=(1.0, 1.0), hflip=True)
    for _ in range(10):
        out = transform(_sample())
        white = (out["image"] == 255).all(axis=2)
        padded = (out["image"] == 0).all(axis=2)
        # the image was 48x40: the crop needs 8 rows and 4 columns of padding, all ignore in the mask
        assert padded.sum() == 56 * 44 - 48 * 40
        np.testing.assert_array_equal(out["mask"] == 255, white | padded)


def test_missing_keys_are_skipped_and_extra_keys_pass_through() -> None:
    sample = _sample()
    image_only = {"image": sample["image"], "labels": np.array([1.0, 0.0], dtype=np.float32)}
    out = TrainTransform(crop_size=24)(image_only)
    assert set(out) == {"image", "labels"} and out["image"].shape == (24, 24, 3)
    np.testing.assert_array_equal(out["labels"], [1.0, 0.0])


def test_same_torch_seed_gives_same_augmentation() -> None:
    transform = TrainTransform(crop_size=32, color_jitter=0.4)
    torch.manual_seed(7)
    first = transform(_sample())
    torch.manual_seed(7)
    second = transform(_sample())
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.parametrize("size", [(37, 23), 97])
def test_eval_resize_uses_nearest_for_masks(size: int | tuple[int, int]) -> None:
    out = EvalTransform(size=size)(_sample())
    expected = (size, size) if isinstance(size, int) else size
    assert out["mask"].shape == expected and out["image"].shape == (*expected, 3)
    assert set(np.unique(out["mask"])) == {0, 2, 5, 255}


def test_eval_center_crop_and_identity() -> None:
    sample = _sample(48, 40)
    out = EvalTransform(size=20, center_crop=True)(sample)
    assert out["mask"].shape == (20, 20)
    same = EvalTransform(size=None)(sample)
    for key in sample:
        np.testing.assert_array_equal(same[key], sample[key])
    with pytest.raises(ValueError, match="center_crop"):
        EvalTransform(size=None, center_crop=True)


def test_normalize_then_denormalize_round_trips() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    tensor = normalize(image)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 9, 7)
    # hand-computed channel 0 of one pixel
    expected = (image[0, 0, 0] / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert tensor[0, 0, 0].item() == pytest.approx(expected, abs=1e-6)
    back = denormalize(tensor[None])
    assert back.dtype == torch.uint8 and back.shape == (1, 9, 7, 3)
    np.testing.assert_array_equal(back[0].numpy(), image)
