"""bench/gpu_results.sh composes: every command it would run (GPU run and CPU dry run) builds a valid config.

The dry run itself (`bash bench/gpu_results.sh --dry-run`, one batch per method on real data) takes
several minutes on 2 cores, so it is a documented command (BENCHMARKS.md), not a test. Here the script
prints its commands (`--print`) and each train.py / evaluate.py command is composed from the real
configs with exactly those overrides, as Hydra would, and checked by the run's config checks; the
models that the weak chain trains first (prior_model_overrides) and its prior (prior_overrides) too.
"""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import EXPERIMENTS, ROOT, compose_config
from usgs.nets import zoo
from usgs.run.config_checks import check_config

SCRIPT = ROOT / "bench" / "gpu_results.sh"
METHODS = {"maskcontrast_stanford", "twins_stanford", "clusternet_stanford", "pspnet_stanford", "classifier_stanford",
           "single_stage_stanford", "weak_deeplab_stanford", "supervised", "saliency_weizmann"}


def commands(*flags: str) -> list[list[str]]:
    env = {**os.environ, "PYTHON": "python", "OUT": "out", "RUNS": "runs", "SEEDS": "0 1"}
    printed = subprocess.run(["bash", str(SCRIPT), *flags, "--print"], check=True, capture_output=True, text=True,
                             env=env, cwd=ROOT).stdout
    return [shlex.split(line) for line in printed.splitlines() if line.strip()]


def overrides_of(command: list[str]) -> list[str]:
    return [arg for arg in command[2:] if not arg.startswith("hydra.")]


def value_of(overrides: list[str], key: str) -> list[str]:
    values = [arg.split("=", 1)[1] for arg in overrides if arg.startswith(f"{key}=")]
    return ast.literal_eval(values[-1]) if values else []


def test_script_is_executable_bash_with_strict_mode():
    assert os.access(SCRIPT, os.X_OK)
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.parametrize("flags", [(), ("--dry-run",)], ids=["gpu", "dry-run"])
def test_every_command_composes(flags, tmp_path):
    cmds = commands(*flags)
    scripts = [Path(c[1]).name for c in cmds]
    assert scripts[0] == "throughput.py" and scripts[-1] == "gpu_tables.py"
    trains = [overrides_of(c) for c in cmds if c[1] == "train.py"]
    experiments = [value_of_plain(o, "experiment") for o in trains]
    assert set(experiments) == METHODS and set(experiments) <= set(EXPERIMENTS)
    assert len(trains) == 2 * len(METHODS)  # SEEDS="0 1": every run per seed
    for overrides in trains:
        cfg = compose_config("train", overrides, tmp_path)
        check_config(cfg)
        assert cfg.callbacks.channels_last._target_ == "usgs.callbacks.ChannelsLast"
        for net in (cfg.model.get("net"), cfg.model.get("backbone")):  # named weights fit the overridden backbone
            if net is not None and net.get("weights") in zoo.REGISTRY:
                assert zoo.REGISTRY[net.weights].backbone == net.get("backbone", net.get("name")), overrides
        if "--dry-run" in flags:  # one batch of a tiny crop on CPU, with a checkpoint for the next steps
            assert cfg.trainer.accelerator == "cpu" and cfg.trainer.limit_train_batches == 1
            assert cfg.trainer.max_epochs == 1 and cfg.data.num_workers == 0 and not cfg.trainer.fast_dev_run
        else:  # bf16 autocast on the GPU, loader workers with pinned memory, full epochs
            assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
            assert cfg.data.num_workers >= 4 and cfg.data.pin_memory and cfg.trainer.limit_train_batches == 1.0
        if "prior_model_overrides" in " ".join(overrides):  # the weak chain's classifier, trained first
            model_cfg = compose_config("train", ["experiment=classifier",
                                                 *value_of(overrides, "prior_model_overrides")], tmp_path)
            assert model_cfg.data._target_ == cfg.data._target_  # so prior_auto hands it the run's data
            check_config(model_cfg)
            compose_config("make_priors", [f"prior={cfg.data.prior}", *value_of(overrides, "prior_overrides")],
                           tmp_path)
    evaluations = [overrides_of(c) for c in cmds if c[1] == "evaluate.py"]
    assert sorted(value_of_plain(o, "task") for o in evaluations) == ["kmeans", "kmeans", "linear_probe", "linear_probe"]
    for overrides in evaluations:
        assert value_of_plain(overrides, "split") == "test"
        assert value_of_plain(overrides, "ckpt_path").startswith("runs/maskcontrast/seed_")
        compose_config("evaluate", [o for o in overrides if not o.startswith("ckpt_path=")], tmp_path)


def value_of_plain(overrides: list[str], key: str) -> str:
    return [arg.split("=", 1)[1] for arg in overrides if arg.startswith(f"{key}=")][-1]


def test_gpu_run_uses_the_papers_networks_at_224_px(tmp_path):
    by_experiment = {value_of_plain(o, "experiment"): compose_config("train", o, tmp_path)
                     for o in (overrides_of(c) for c in commands() if c[1] == "train.py")}
    maskcontrast = by_experiment["maskcontrast_stanford"]
    assert maskcontrast.model.net.backbone == "resnet50" and maskcontrast.data.train_transform.crop_size == 224
    for name in ("clusternet_stanford", "pspnet_stanford", "supervised", "weak_deeplab_stanford", "single_stage_stanford"):
        assert by_experiment[name].model.net.backbone == "resnet50", name
        assert OmegaConf.to_object(by_experiment[name].data.train_transform).get("crop_size") == 224, name


def test_tables_collect_mean_and_population_std(tmp_path):
    import json

    for seed, miou in ((0, 0.2), (1, 0.4)):
        run = tmp_path / "pspnet" / f"seed_{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"test/miou": miou, "val/miou": 0.9, "test/iou/sky": 0.5}))
    (tmp_path / "timings.tsv").write_text("pspnet/seed_0\t10\npspnet/seed_1\t30\n")
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_tables.py"), str(tmp_path), "--out",
                    str(tmp_path / "out")], check=True, capture_output=True, cwd=ROOT)
    table = (tmp_path / "out" / "gpu_results.md").read_text()
    assert "| pspnet | test/miou | 30.0 ± 10.0 | 2 | 20 ± 10 |" in table
    assert "val/miou" not in table and "iou/sky" not in table


def test_throughput_runs_every_setting_on_cpu(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import throughput

    rows = throughput.main(["--device", "cpu", "--steps", "1", "--warmup", "0", "--batch", "2", "--crop", "32",
                            "--backbone", "resnet18", "--out", str(tmp_path)])
    assert [(r["precision"], r["channels_last"]) for r in rows] == [
        ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    assert all(r["images_per_s"] > 0 and r["last_loss"] == r["last_loss"] for r in rows)  # finite, not NaN
    assert "| bf16 | on |" in (tmp_path / "throughput.md").read_text()
    assert (tmp_path / "throughput.json").is_file()


def test_channels_last_callback_gives_the_same_outputs():
    """The layout is a speed choice only: same weights, same input -> the same outputs (eval mode)."""
    import torch

    from usgs.callbacks import ChannelsLast

    sys.path.insert(0, str(ROOT / "bench"))
    import throughput

    torch.manual_seed(0)
    model = throughput.build_model("resnet18").eval()
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(image)
        ChannelsLast().setup(None, model, "fit")
        assert model.net.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        last = model(image)
    assert torch.allclose(plain, last, atol=1e-4)
