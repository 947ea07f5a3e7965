"""Two processes joined by torch.distributed (gloo, CPU), as two SLURM tasks or nodes would be: each
computes its shard of a prior cache and of a frozen-feature cache; then the plain commands give the
prior cache of one unsharded process, byte for byte, and the evaluation metrics of one process."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
    os.environ.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    torch.set_num_threads(1)
    shard = f"{rank}/{world}"
    _priors(tmp / f"run{rank}", tmp / "priors", f"shard={shard}")
    _evaluate(tmp / f"eval{rank}", tmp / "features", weights, f"feature_shard={shard}")
    dist.barrier()  # every shard is on disk
    # Left before the plain commands: a metric (torchmetrics) inside a process group sums its
    # counts over the ranks, right for data split among ranks, not for these whole-split commands.
    dist.destroy_process_group()
    if rank == 0:
        _priors(tmp / "run0", tmp / "priors")
    metrics = _evaluate(tmp / f"eval{rank}", tmp / "features", weights)  # reads the caches only
    (tmp / f"metrics{rank}.json").write_text(json.dumps(metrics))


def test_two_gloo_processes_shard_priors_and_features(tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(backbone("resnet18").state_dict(), weights)
    _priors(tmp_path / "one", tmp_path / "one" / "priors")
    single = _evaluate(tmp_path / "one_eval", tmp_path / "one_features", weights)
    # fork: the children start with this process's imports (a spawned interpreter re-imports for ~10 s)
    mp.start_processes(_rank, args=(2, tmp_path, weights), nprocs=2, join=True, start_method="fork")
    assert _cache(tmp_path / "priors") == _cache(tmp_path / "one" / "priors")
    per_rank = [json.loads((tmp_path / f"metrics{r}.json").read_text()) for r in range(2)]
    assert "linear_probe/linear_probe/miou" in single
    assert per_rank == [single, single]
    # the shards wrote disjoint chunks of one cache folder per split: 16 train + 8 val images
    folders = sorted((tmp_path / "features").iterdir())
    assert [len(list(f.glob("chunk-*.json"))) for f in folders] == [4, 2]
