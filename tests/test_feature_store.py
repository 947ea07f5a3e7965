"""The on-disk feature cache: chunks written atomically and only when complete, read back as written,
refused for other features; a FeatureSource with a store runs the network once over all its passes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from usgs.evaluation.feature_store import FeatureStore, module_fingerprint, shard_chunks
from usgs.evaluation.features import FeatureSource


def test_store_round_trip_in_chunks(tmp_path: Path) -> None:
    identity = {"split": "val", "backbone": "toy"}
    store = FeatureStore(tmp_path, identity, num_images=7, chunk=3)
    features = [torch.randn(4, 2, 3) for _ in range(7)]
    saliency = [torch.rand(5, 6) for _ in range(7)]
    for i in range(5):
        store.add(i, features[i], saliency[i])
    assert not store.missing(range(3)) and store.missing(range(3, 6))  # chunk 1 lacks image 5: unwritten
    assert sorted(p.name for p in store.folder.iterdir()) == [
        "chunk-000000.f16", "chunk-000000.json", "chunk-000000.sal", "identity.json"]
    again = FeatureStore(tmp_path, identity, num_images=7, chunk=3)  # a new writer (a rerun, another process)
    for i in range(3, 7):
        again.add(i, features[i], saliency[i])
    assert again.complete()
    read, sal = again.read([4, 5])
    assert read.dtype == torch.float32 and torch.equal(read, torch.stack(features[4:6]).half().float())
    assert sal is not None and torch.equal(sal, torch.stack(saliency[4:6]))  # saliency kept in float32
    with pytest.raises(RuntimeError, match="holds other features"):
        (again.folder / "identity.json").write_text('{"split": "val", "backbone": "other"}')
        FeatureStore(tmp_path, identity, num_images=7, chunk=3)


def test_shards_cover_every_image_once_in_whole_chunks() -> None:
    for n_images in (0, 1, 7, 64, 200):
        for n in (1, 2, 3, 5):
            parts = [shard_chunks(n_images, (i, n), chunk=8) for i in range(n)]
            assert [j for p in parts for j in p] == list(range(n_images))
            assert all(p.start % 8 == 0 for p in parts if len(p))


class Counting(nn.Module):
    """``embed`` -> (features [B,3,H/2,W/2], None); counts the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 2, stride=2)
        self.seen = 0

    def embed(self, image: Tensor) -> tuple[Tensor, None]:
        self.seen += image.shape[0]
        return self.conv(image), None


def test_source_with_store_runs_the_network_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    batches = [{"image": torch.rand(2, 3, 8, 8), "mask": torch.zeros(2, 8, 8, dtype=torch.long)} for _ in range(3)]
    net = Counting()
    identity = {"split": "val", "module": module_fingerprint(net)}
    first = FeatureSource(net, batches, torch.device("cpu"), store=FeatureStore(tmp_path, identity, 6, chunk=4))
    one = [out.features.dense() for _, out in first]
    two = [out.features.dense() for _, out in first]
    later = FeatureSource(net, batches, torch.device("cpu"), store=FeatureStore(tmp_path, identity, 6, chunk=4))
    three = [out.features.dense() for _, out in later]
    assert net.seen == 6  # one network pass over three passes and two sources
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(one, two, three))
    assert one[0].shape == (2, 3, 8, 8)  # upsampled to the image as read
    net.conv.weight.data.add_(1.0)
    assert module_fingerprint(net) != identity["module"]  # other weights: another folder
