"""train.py end to end on the synthetic data: outputs, determinism, resume, overlays, DDP, sweeps."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from usgs.run.checkpoints import load_checkpoint
from usgs.run.train import train

ROOT = Path(__file__).resolve().parents[1]
# A tiny but complete run: 1 epoch of 2 batches of 32-px images, then validation and test.
TINY = [
    "experiment=supervised",
    "data.image_size=32",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run_cli(args: list[str], cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_run_writes_metrics_config_sha_and_checkpoint(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg(TINY))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"train/loss", "val/miou", "val/miou_best", "test/miou", "test/pixel_accuracy"} <= set(metrics)
    assert result == metrics["val/miou_best"]
    assert 0.0 <= metrics["test/miou"] <= 1.0
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["model"]["_target_"] == "usgs.methods.supervised.SupervisedSegmentation"
    assert "${" not in (tmp_path / "config.yaml").read_text()  # resolved
    assert len((tmp_path / "git_sha.txt").read_text().strip()) >= 7
    mode = 0o666 & ~_umask()  # what a plain open() gives, not mkstemp's 0600
    for written in ("metrics.json", "config.yaml", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert stat.S_IMODE((tmp_path / written).stat().st_mode) == mode, written
    cfg, model = load_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    assert cfg.model.net.backbone == "resnet18"
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    saved = best["state_dict"]
    # best.ckpt is for evaluation (weights + config); last.ckpt also holds what resuming needs
    assert "optimizer_states" not in best
    assert "optimizer_states" in torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert torch.equal(model.state_dict()["net.head.classifier.weight"], saved["net.head.classifier.weight"])


def test_same_seed_same_metrics_and_other_seed_differs(make_cfg, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        train(make_cfg([*TINY, f"seed={seed}", "trainer.limit_test_batches=1"], run_dir=tmp_path / name))
        runs[name] = (tmp_path / name / "metrics.json").read_text()
    assert runs["a"] == runs["b"]
    assert json.loads(runs["a"])["train/loss"] != json.loads(runs["c"])["train/loss"]


def test_resume_continues_from_last_checkpoint(make_cfg, tmp_path: Path) -> None:
    train(make_cfg([*TINY, "test=false"]))
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    train(make_cfg([*TINY, "test=false", "resume=true", "trainer.max_epochs=2"]))
    second = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert (first["epoch"], first["global_step"]) == (0, 2)
    assert (second["epoch"], second["global_step"]) == (1, 4)  # one more epoch, not two


def test_ddp_spawn_two_processes_give_the_one_process_metric(make_cfg, tmp_path: Path) -> None:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    # 15 images on 2 processes: Lightning's DistributedSampler would score one of them twice.
    cfg = make_cfg([*TINY, "data.num_val=15", "data.eval_batch_size=4"])
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    # An untrained net's argmax has near-ties that batch composition and float reduction order can
    # flip; a classifier with zero weights and a ramped bias predicts the last class everywhere, so
    # the score depends only on which pixels are scored (an image scored twice changes it).
    with torch.no_grad():
        classifier = model.net.head.classifier
        classifier.weight.zero_()
        classifier.bias.copy_(torch.arange(classifier.bias.numel(), dtype=classifier.bias.dtype))
    scores = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for devices, strategy in ((1, "auto"), (2, "ddp_spawn")):
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy=strategy,
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            deterministic=True,
        )
        scores.append(trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/miou"])
    torch.set_num_threads(threads)
    assert scores[0] > 0 and scores[0] == scores[1]
    # And the full training path under ddp_spawn (Hydra's trainer=ddp_spawn config) writes its metrics.
    train(
        make_cfg(
            [*TINY, "trainer=ddp_spawn", "trainer.accelerator=cpu", "test=false"], run_dir=tmp_path / "ddp"
        )
    )
    assert "val/miou_best" in json.loads((tmp_path / "ddp" / "metrics.json").read_text())


def test_config_typos_fail_with_hydra_messages(tmp_path: Path) -> None:
    typo = run_cli(["train.py", "model.optimiser.lr=0.1", f"hydra.run.dir={tmp_path}"])
    assert typo.returncode != 0
    assert "optimiser" in typo.stderr and "Traceback" not in typo.stderr
    group = run_cli(["train.py", "data=nope", f"hydra.run.dir={tmp_path}"])
    assert group.returncode != 0
    assert "Could not find 'data/nope'" in group.stderr and "shapes" in group.stderr


def test_joblib_multirun_sweeps_two_values(tmp_path: Path) -> None:
    out = run_cli(
        [
            "train.py",
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "seed=1,2",
            *TINY,
            "logger=csv",
            "test=false",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(tmp_path.glob("*/metrics.json"))
    assert len(runs) == 2
    seeds = {yaml.safe_load((r.parent / "config.yaml").read_text())["seed"] for r in runs}
    assert seeds == {1, 2}
    table = (tmp_path / "multirun_report.md").read_text()  # one table of both runs' metrics
    assert "seed=1" in table and "seed=2" in table and "val/miou_best" in table


def test_optuna_search_never_tests_and_prints_the_one_test_command(tmp_path: Path) -> None:
    """hparams_search sets test=false itself: no trial runs a test step, the sweep table holds val only,
    and the best trial's configuration is tested once by the printed command."""
    out = run_cli(
        [
            "train.py",
            "hparams_search=supervised_optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            *TINY,
            "logger=csv",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert "model.optimizer.lr" in best["best_params"]
    assert 0.0 <= best["best_value"] <= 1.0
    trials = sorted(tmp_path.glob("*/metrics.json"))
    assert len(trials) == 2
    for trial in trials:
        assert not [k for k in json.loads(trial.read_text()) if k.startswith("test/")], trial
        assert yaml.safe_load((trial.parent / "config.yaml").read_text())["test"] is False
    table = (tmp_path / "multirun_report.md").read_text()
    assert "val/miou_best" in table and "test/" not in table
    command = (tmp_path / "test_command.txt").read_text().splitlines()[-1]
    assert command.startswith("python train.py ") and command.endswith(" test=true")
    assert f"model.optimizer.lr={best['best_params']['model.optimizer.lr']}" in command
    assert "hparams_search" not in command and command in out.stdout


def test_tensorboard_gets_config_text_and_titled_overlays(make_cfg, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(make_cfg([*TINY, "logger=tensorboard", "test=false", "seed=5"]))
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "usgs.methods.supervised.SupervisedSegmentation" in text and "seed: 5" in text
    image = acc.Images("val/overlays")[-1]
    # image | ground truth | prediction, 4 rows of >= 192 px tiles (32 px scaled 6x), titles, legend
    assert image.width >= 3 * 192 and image.height >= 4 * 192 + 24


def test_submitit_slurm_launcher_config_composes() -> None:
    import warnings

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import get_class

    GlobalHydra.instance().clear()
    with warnings.catch_warnings():  # Hydra's note that the file is checked against the plugin's schema
        warnings.simplefilter("ignore", UserWarning)
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"],
                          return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher.partition == "gpu" and launcher.timeout_min > 0 and launcher.tasks_per_node == 1
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"  # the plugin is installed
