"""make_priors.py shard=i/n: shards (one of them killed and rerun) + the plain command give the cache of
one unsharded run, byte for byte; the plain command computes only what the shards left missing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import compose_config
from tests.test_priors_kill import _cache
from usgs.priors.base import State
from usgs.priors.cache import shard_batches
from usgs.priors.kmeans import TorchKMeansPrior
from usgs.run.priors import make_priors, parse_shard

DIE_AT = "USGS_TEST_DIE_AT"  # image index at which the prior dies (an env var: not part of the cache identity)
ARGS = ["prior=kmeans", f"prior._target_={__name__}.DyingPrior", "prior.k=4", "prior.batch_size=2",
        "prior.samples_per_image=32", "data=shapes", "data.num_train=12", "data.image_size=32", "progress=false"]


class DyingPrior(TorchKMeansPrior):
    """The fast k-means prior, killed (KeyboardInterrupt, like Ctrl-C) when it reaches image $USGS_TEST_DIE_AT."""

    computed: list[int] = []

    def local(self, images: Sequence[np.ndarray], indices: Sequence[int]) -> list[State]:
        if os.environ.get(DIE_AT) and int(os.environ[DIE_AT]) in indices:
            raise KeyboardInterrupt
        DyingPrior.computed.extend(indices)
        return super().local(images, indices)


def _run(run_dir: Path, *overrides: str) -> dict:
    return make_priors(compose_config("make_priors", [*ARGS, *overrides], run_dir))


def test_shard_slices_cover_the_batches_once() -> None:
    for batches in (0, 1, 5, 6, 13):
        for n in (1, 2, 3, 4, 7):
            parts = [list(shard_batches(batches, (i, n))) for i in range(n)]
            assert [b for p in parts for b in p] == list(range(batches))
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "1-4", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard="):
            parse_shard(bad)


def test_shards_and_a_killed_shard_give_the_unsharded_cache(tmp_path: Path, monkeypatch) -> None:
    _run(tmp_path / "one")
    reference = _cache(tmp_path / "one" / "priors")
    sharded = tmp_path / "sharded"
    DyingPrior.computed = []
    report = _run(sharded, "shard=0/3")
    assert report["shard"] == "0/3" and report["images"] == 4 and DyingPrior.computed == [0, 1, 2, 3]
    (folder,) = (sharded / "priors" / "shapes" / "train").iterdir()
    assert not (folder / "manifest.json").exists() and not list(folder.glob("*.png"))  # per-image stage only
    assert len(list((folder / ".states").iterdir())) == 4
    monkeypatch.setenv(DIE_AT, "6")
    with pytest.raises(KeyboardInterrupt):  # shard 1 dies in its second batch, after its first
        _run(sharded, "shard=1/3")
    monkeypatch.delenv(DIE_AT)
    DyingPrior.computed = []
    assert _run(sharded, "shard=1/3")["computed"] == 2 and DyingPrior.computed == [6, 7]  # resumed
    DyingPrior.computed = []
    report = _run(sharded)  # shard 2/3 never ran: the plain command computes it, then the global stage
    assert DyingPrior.computed == [8, 9, 10, 11] and report["images"] == 12
    assert not (folder / ".shards").exists() and not (folder / ".states").exists()
    assert _cache(sharded / "priors") == reference


def test_a_split_fitted_on_train_shards_train_first(tmp_path: Path) -> None:
    report = _run(tmp_path, "split=val", "data.num_val=4", "shard=1/2")
    assert report["split"] == "train" and report["shard"] == "1/2"  # train's per-image stage; val waits
    assert not (tmp_path / "priors" / "shapes" / "val").exists()
