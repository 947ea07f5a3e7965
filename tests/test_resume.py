"""resume=true after a SIGKILL ends exactly where an uninterrupted run ends; what resume refuses."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from usgs.run.outputs import atomic_write_text
from usgs.run.start import resolved_config
from usgs.run.train import train

ROOT = Path(__file__).resolve().parents[1]
# 3 epochs of 3 batches of 32-px images; supervised DeepLab has random crops/flips and dropout.
RUN = ["experiment=supervised", "seed=7", "logger=csv", "data.num_workers=0", "data.image_size=32",
       "data.num_train=12", "data.num_val=8", "data.num_test=8", "data.batch_size=4", "data.eval_batch_size=8",
       "trainer.max_epochs=3", "trainer.limit_train_batches=3", "trainer.log_every_n_steps=1",
       "callbacks.prediction_overlays=null", "callbacks.lr_monitor=null"]
# train.py with a hook that SIGKILLs the process right after training step KILL_AT (0 = never):
# a real kill with no clean-up, at a known point in the middle of an epoch.
KILLING_TRAIN = """
import os, runpy, signal, sys
from usgs.methods.base import SegmentationModule
kill_at, original = int(os.environ["KILL_AT"]), SegmentationModule.on_train_batch_end
def on_train_batch_end(self, outputs, batch, batch_idx):
    original(self, outputs, batch, batch_idx)
    if self.global_step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
SegmentationModule.on_train_batch_end = on_train_batch_end
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_epoch_order_and_augmentations_follow_seed_and_epoch_only() -> None:
    """What a resumed run relies on: epoch e's samples do not depend on what ran before."""
    from usgs.data.samplers import SeededEpochSampler
    from usgs.data.shapes import ShapesDataset
    from usgs.data.transforms import TrainTransform

    dataset = ShapesDataset("train", 6, image_size=32, transform=TrainTransform(24, scale=(0.5, 2.0)))
    fresh = SeededEpochSampler(len(dataset), seed=3)
    fresh.set_epoch(2)
    used = SeededEpochSampler(len(dataset), seed=3)
    for _ in range(3):  # two earlier epochs drawn, then Lightning sets the epoch, as after a resume
        list(used)
    used.set_epoch(2)
    items = list(fresh)
    assert items == list(used) and sorted(i for i, _ in items) == list(range(6))
    fresh.set_epoch(3)
    assert [i for i, _ in fresh] != [i for i, _ in items]  # another epoch, another order
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = dataset[items[0]]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is not moved
    torch.rand(100)  # whatever else moves it in between changes nothing
    again = dataset[items[0]]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])


def test_training_stream_is_not_moved_by_draws_outside_training() -> None:
    from usgs.methods.training_rng import TrainingRNG

    cpu = torch.device("cpu")

    def draws(disturb: bool) -> list[torch.Tensor]:
        torch.manual_seed(1)
        rng, out = TrainingRNG(), []
        for step in range(3):
            outside = torch.get_rng_state()
            rng.enter(cpu)
            out.append(torch.rand(4))
            rng.exit(cpu)
            assert torch.equal(torch.get_rng_state(), outside)  # the global generator is given back
            if disturb:
                torch.rand(10 + step)  # validation, callbacks, logging
            if step == 1:  # a checkpoint and a resume in between
                saved, rng = rng.state_dict(), TrainingRNG()
                rng.load_state_dict(saved)
        return out

    assert all(torch.equal(a, b) for a, b in zip(draws(False), draws(True), strict=True))


def run_train(run_dir: Path, *overrides: str, kill_at: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", KILLING_TRAIN, *RUN, *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_metrics(make_cfg, tmp_path: Path) -> None:
    # uninterrupted, in this process, with the subprocesses' one thread (float sums depend on it)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(make_cfg(RUN, run_dir=tmp_path / "reference"))
    finally:
        torch.set_num_threads(threads)
    # step 5 = the 2nd of 3 batches of epoch 2: last.ckpt holds epoch 1 (3 steps)
    killed = run_train(tmp_path / "run", kill_at=5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.json").exists()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (0, 3)
    torch.set_num_threads(1)  # resumed in this process (one interpreter start less), with the same one thread
    try:
        cfg = make_cfg([*RUN, "resume=true"], run_dir=tmp_path / "run")
        stored = OmegaConf.load(tmp_path / "run" / "config.yaml")  # the subprocess's default paths
        with open_dict(cfg):
            for key in ("log_dir", "priors_dir", "features_dir"):
                cfg.paths[key] = stored.paths[key]
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    expected = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    assert {"train/loss", "val/miou", "val/miou_best", "test/miou"} <= set(expected)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == expected
    weights = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for d in (tmp_path / "reference", tmp_path / "run")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


TINY = ["experiment=supervised", "data.image_size=32", "data.batch_size=4", "trainer.max_epochs=1",
        "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"]


def test_resume_after_the_last_epoch_reports_the_same_metrics(make_cfg, tmp_path: Path) -> None:
    """A run killed after its last checkpoint (e.g. in the test step): the fit metrics come from the
    checkpoint, the test is repeated, metrics.json is the same."""
    overrides = [*TINY, "test=true", "trainer.limit_test_batches=1"]
    train(make_cfg(overrides))
    expected = (tmp_path / "metrics.json").read_text()
    (tmp_path / "metrics.json").unlink()
    train(make_cfg([*overrides, "resume=true"]))
    assert {"train/loss", "val/miou_best", "test/miou"} <= set(json.loads(expected))
    assert (tmp_path / "metrics.json").read_text() == expected


def test_resume_without_last_checkpoint_warns_with_the_path(make_cfg, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="usgs.run.resume"):
        train(make_cfg([*TINY, "resume=true", "train=false"]))
    assert str(tmp_path / "checkpoints" / "last.ckpt") in caplog.text


def test_resume_with_another_config_stops_and_names_the_difference(make_cfg, tmp_path: Path, caplog) -> None:
    stored = make_cfg([*TINY, "train=false"])
    atomic_write_text(tmp_path / "config.yaml", OmegaConf.to_yaml(resolved_config(stored)))
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"model.optimizer.lr: 0.01 \(stored\) -> 0.5 \(now\)"):
        train(make_cfg([*TINY, "resume=true", "train=false", "model.optimizer.lr=0.5"]))
    assert (tmp_path / "config.yaml").read_text() == before  # not overwritten
    # trainer.max_epochs may change (train longer); the change is logged, not silent
    with caplog.at_level(logging.WARNING, logger="usgs.run.resume"):
        train(make_cfg([*TINY, "resume=true", "train=false", "trainer.max_epochs=2"]))
    assert "trainer.max_epochs changes from 1 to 2" in caplog.text
    assert OmegaConf.load(tmp_path / "config.yaml").trainer.max_epochs == 2
