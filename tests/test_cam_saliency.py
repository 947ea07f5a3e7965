"""The seed's attention + saliency pseudo-GT rules, on hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest

from usgs.priors.cam_saliency_rules import attention_saliency_pseudo_gt

H = W = 40  # 1% of the image = 16 pixels


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.full((H, W, 3), 128, dtype=np.uint8)
    saliency = np.zeros((H, W), dtype=np.uint8)
    attention = np.zeros((2, H, W), dtype=np.float32)  # channels: class 3, class 5
    saliency[2:12, 2:12] = 1  # blob A, 100 px
    attention[0, 4:10, 4:10] = 0.9  # class 3: 36 px > 25 inside A
    saliency[20:30, 2:12] = 1  # blob B, 100 px
    attention[0, 22:27, 4:9] = 0.9  # class 3: exactly 25 px -> too small, dropped
    saliency[32:35, 32:35] = 1  # blob C: 9 px < 1% -> dropped as saliency
    attention[1, 30:38, 30:38] = 0.5  # class 5 over C, outside any kept saliency blob: kept
    # class 5: two 15 + 12 px pieces that touch only diagonally -> one 27 px 8-connected blob
    attention[1, 15:18, 20:25] = 0.6
    attention[1, 18:21, 25:29] = 0.6
    return image, attention, saliency


def test_seed_rules_on_hand_built_arrays() -> None:
    image, attention, saliency = _scene()
    out = attention_saliency_pseudo_gt(image, attention, [3, 5], saliency)
    expected = np.full((H, W), 255, dtype=np.uint8)
    expected[2:12, 2:12] = 3  # one class overlaps blob A -> the whole blob
    expected[30:38, 30:38] = 5  # attention outside (kept) saliency is kept, tiny blob C included
    expected[15:18, 20:25] = 5
    expected[18:21, 25:29] = 5
    np.testing.assert_array_equal(out, expected)  # blob B: no class -> ignore


def test_unlabelled_pixels_become_background_as_in_the_seed_code() -> None:
    image, attention, saliency = _scene()
    out = attention_saliency_pseudo_gt(image, attention, [3, 5], saliency, unmatched_label=0, fill_label=0)
    expected = np.zeros((H, W), dtype=np.uint8)  # the seed: merged_mask[merged_mask == 255] = 0
    expected[2:12, 2:12] = 3
    expected[30:38, 30:38] = 5
    expected[15:18, 20:25] = 5
    expected[18:21, 25:29] = 5
    np.testing.assert_array_equal(out, expected)


def test_attention_outside_saliency_is_kept_per_blob() -> None:
    image = np.full((H, W, 3), 128, dtype=np.uint8)
    saliency = np.zeros((H, W), dtype=np.uint8)
    saliency[5:15, 5:15] = 1  # one salient blob
    attention = np.zeros((1, H, W), dtype=np.float32)
    attention[0, 10:20, 10:30] = 0.8  # one class-2 blob, half inside the salient blob, half outside
    attention[0, 30:36, 30:36] = 0.8  # a second class-2 blob far from any saliency
    seed = attention_saliency_pseudo_gt(image, attention, [2], saliency)
    expected = np.full((H, W), 255, dtype=np.uint8)
    expected[5:15, 5:15] = 2  # the salient blob takes the class of the blob touching it
    expected[30:36, 30:36] = 2  # the blob touching no salient blob is kept whole
    np.testing.assert_array_equal(seed, expected)  # the touching blob's outside part is NOT kept
    per_pixel = attention_saliency_pseudo_gt(image, attention, [2], saliency, isolated="pixel")
    expected[10:20, 10:30] = 2  # the earlier per-pixel rule keeps it
    np.testing.assert_array_equal(per_pixel, expected)


def test_thin_blobs_are_dropped_as_in_the_seed() -> None:
    image = np.full((H, W, 3), 128, dtype=np.uint8)
    saliency = np.zeros((H, W), dtype=np.uint8)
    saliency[20, :] = 1  # a one-row salient line of 40 px > 1% (16 px): zero-area bounding box
    attention = np.zeros((1, H, W), dtype=np.float32)
    attention[:, 2:38, 5] = 0.9  # a one-column attention line of 36 px > 25
    out = attention_saliency_pseudo_gt(image, attention, [1], saliency)
    assert (out == 255).all()  # both lines dropped
    kept = attention_saliency_pseudo_gt(image, attention, [1], saliency, drop_thin_blobs=False)
    expected = np.full((H, W), 255, dtype=np.uint8)
    expected[20, :] = 1  # the line touches the attention: one class -> the whole salient line
    expected[2:38, 5] = 1  # the attention line touches the salient line: only its overlap is written
    expected[[r for r in range(2, 38) if r != 20], 5] = 255
    np.testing.assert_array_equal(kept, expected)


def test_threshold_and_minimum_size_are_configurable() -> None:
    image, attention, saliency = _scene()
    out = attention_saliency_pseudo_gt(
        image, attention, [3, 5], saliency, threshold=0.7, min_attention_pixels=20
    )
    assert (out[20:30, 2:12] == 3).all()  # 25 px > 20 now counts
    assert (out[30:38, 30:38] == 255).all()  # 0.5 < 0.7: class 5 is gone


def test_several_classes_in_one_blob_are_split_by_the_crf() -> None:
    pytest.importorskip("pydensecrf")
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[:, :20] = (200, 30, 30)
    image[:, 20:] = (30, 30, 200)
    saliency = np.zeros((H, W), dtype=np.uint8)
    saliency[5:35, 5:35] = 1
    attention = np.zeros((2, H, W), dtype=np.float32)
    attention[0, 10:30, 6:22] = 1.0  # class 1 leans over the colour edge at column 20 ...
    attention[1, 10:30, 21:34] = 1.0  # ... class 2 on the blue side
    out = attention_saliency_pseudo_gt(image, attention, [1, 2], saliency)
    assert set(np.unique(out[5:35, 5:35])) <= {1, 2}
    assert (out[5:35, 5:18] == 1).mean() > 0.9 and (out[5:35, 23:35] == 2).mean() > 0.9
    assert (out[:5] == 255).all()


def test_bad_shapes_are_reported() -> None:
    image, attention, saliency = _scene()
    with pytest.raises(ValueError, match="len\\(classes\\)"):
        attention_saliency_pseudo_gt(image, attention, [3], saliency)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_attention_maps_are_resized_to_the_image_with_the_chosen_mode(
        mode: str, make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed resizes each map back with F.interpolate(size=(h, w)), i.e. nearest neighbour: a
    2x2 map on a 32x32 image becomes four constant 16x16 blocks."""
    import torch
    from hydra.utils import instantiate

    import usgs.priors.cam_saliency as cs

    grid = np.array([[0.1, 0.9], [0.5, 0.3]], np.float32)
    seen: dict[str, np.ndarray] = {}
    monkeypatch.setattr(cs, "attention_saliency_pseudo_gt",
                        lambda image, maps, classes, saliency, **kw: seen.setdefault("maps", maps)[0] * 0)
    cfg = make_cfg(["data=shapes", "data.image_size=32", "data.num_train=2", "data.num_val=1", "data.num_test=1"])
    datamodule = instantiate(cfg.data, prior=None)

    def source(x, labels):  # fixed 2x2 attention for every class, at the 2x2 network input
        assert tuple(x.shape[-2:]) == (2, 2)
        return torch.from_numpy(grid).expand(1, labels.shape[1], 2, 2).clone()

    prior = cs.AttentionSaliencyPrior(torch.nn.Identity(), lambda model: source, datamodule, saliency=None,
                                      crf=None, input_size=[2, 2], attention_resize=mode)
    image = datamodule.dataset("train", transform=None).load(0)["image"]
    prior.local([image], [0])
    maps = seen["maps"]
    blocks = np.kron(grid, np.ones((16, 16), np.float32))
    if mode == "nearest":
        assert all(np.array_equal(m, blocks) for m in maps)
    else:  # bilinear blends the blocks: values strictly between the grid's near the centre
        assert not np.array_equal(maps[0], blocks)
        assert 0.1 < maps[0][8, 15] < 0.9 and np.isclose(maps[0][0, 0], 0.1)
    with pytest.raises(ValueError, match="attention_resize"):
        cs.AttentionSaliencyPrior(torch.nn.Identity(), lambda model: source, datamodule, saliency=None,
                                  attention_resize="cubic")
