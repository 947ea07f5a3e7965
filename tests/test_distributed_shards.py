"""Two processes joined by torch.distributed (gloo, CPU), as two SLURM tasks or nodes would be: each
computes its shard of a prior cache and of a frozen-feature cache; then the plain commands give the
prior cache of one unsharded process, byte for byte, and the evaluation metrics of one process.

The plain commands run outside the process group: a metric (torchmetrics) inside one sums its counts
over the ranks, right for data split among ranks, not for a command that reads the whole split."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import compose_config
from tests.test_priors_kill import _cache
from usgs.nets.backbones import backbone

PRIORS = ["prior=kmeans", "prior.k=4", "prior.batch_size=2", "prior.samples_per_image=32", "data=shapes",
          "data.num_train=12", "data.image_size=32", "progress=false"]


def _evaluate_args(weights: Path) -> list[str]:
    return ["model=frozen_backbone", "model.backbone.name=resnet18", f"model.backbone.weights={weights}",
            "data.image_size=32", "data.eval_batch_size=4", "task=linear_probe", "task.pixels_per_image=20",
            "task.layer=embedding", "max_train_images=16", "max_eval_images=8", "feature_chunk=4",
            "progress=false", "device=cpu"]


def _priors(run_dir: Path, priors: Path, *extra: str) -> dict:
    from usgs.run.priors import make_priors

    cfg = compose_config("make_priors", [*PRIORS, *extra], run_dir)
    cfg.paths.priors_dir = str(priors)
    return make_priors(cfg)


def _evaluate(run_dir: Path, features: Path, weights: Path, *extra: str) -> dict:
    from usgs.run.evaluate import evaluate

    cfg = compose_config("evaluate", [*_evaluate_args(weights), *extra], run_dir)
    cfg.paths.features_dir = str(features)
    return evaluate(cfg)


def _rank(rank: int, world: int, tmp: Path, weights: Path) -> None:
    """One of ``world`` processes: its shard of the prior cache and of both splits' feature caches."""
    os.environ.update(OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    torch.set_num_threads(1)
    shard = f"{rank}/{world}"
    _priors(tmp / f"run{rank}", tmp / "priors", f"shard={shard}")
    _evaluate(tmp / f"eval{rank}", tmp / "features", weights, f"feature_shard={shard}")
    dist.barrier()  # every shard is on disk before any process leaves
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_shard_priors_and_features(tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(backbone("resnet18").state_dict(), weights)
    mp.spawn(_rank, args=(2, tmp_path, weights), nprocs=2, join=True)  # fork deadlocks under gloo + OpenMP
    # the shards wrote disjoint chunks of one cache folder per split: 16 train + 8 val images
    folders = sorted((tmp_path / "features").iterdir())
    assert [len(list(f.glob("chunk-*.json"))) for f in folders] == [4, 2]
    sharded = _evaluate(tmp_path / "eval", tmp_path / "features", weights)  # reads the features only
    single = _evaluate(tmp_path / "one_eval", tmp_path / "one_features", weights)  # one process, from scratch
    assert "linear_probe/linear_probe/miou" in single and sharded == single
    _priors(tmp_path / "run", tmp_path / "priors")  # the plain command: the global stage
    _priors(tmp_path / "one", tmp_path / "one" / "priors")
    assert _cache(tmp_path / "priors") == _cache(tmp_path / "one" / "priors")
