"""usgs/data/standin.py writes each dataset's real layout, which the real loaders read; the recipe dry
run (bench/recipe_dryrun.py) measures a step on it and resumes from its results file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from tests.conftest import compose_config, load_bench
from usgs.data import standin

# (config, writer, size, extra overrides)
LAYOUTS = {
    "voc": (standin.write_voc, (30, 40), []),
    "cityscapes": (standin.write_cityscapes, (32, 64), ["data.label_mode=raw", "data.num_classes=34"]),
    "vaihingen": (standin.write_vaihingen, (40, 32), ["data.train_tiles=[1]", "data.weak_tiles=[2]",
                                                      "data.val_tiles=[3]", "data.test_tiles=[3]",
                                                      "data.ignore_clutter=false", "data.num_classes=6",
                                                      "data.train_gt=full", "data.crop_size=16"]),
    "intel": (standin.write_intel, (20, 20), []),
    "cocostuff27": (standin.write_cocostuff, (24, 32), []),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_standin_is_read_by_the_real_loader(name: str, tmp_path: Path) -> None:
    writer, size, extra = LAYOUTS[name]
    kwargs = {"areas": [1, 2, 3]} if name == "vaihingen" else {}
    root = writer(tmp_path / "data", size=size, **kwargs)
    cfg = compose_config("train", [f"data={name}", f"data.root={root}", "data.num_workers=0", *extra], tmp_path)
    datamodule = instantiate(cfg.data, _convert_="all")
    test = datamodule.dataset("test", transform=None)
    sample = test.load(0)
    expected = (datamodule.tile_size,) * 2 if name == "vaihingen" else size
    assert sample["image"].shape == (*expected, 3) and sample["image"].dtype == np.uint8
    if "mask" in sample:
        labels = set(np.unique(sample["mask"]).tolist()) - {255}
        assert labels and max(labels) < datamodule.num_classes
    assert len(datamodule.dataset("train", transform=None)) > 0


def test_dryrun_measures_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dryrun = load_bench("recipe_dryrun")
    name = "vaihingen_task1"
    small = ["data.crop_size=32", "data.train_transform.crop_size=32", "data.crops_per_epoch=8"]
    monkeypatch.setitem(dryrun.RECIPES, name, (*dryrun.RECIPES[name][:2], [*dryrun.RECIPES[name][2], *small]))
    result = dryrun.run_one(name, steps=2, max_batch=2, device="cpu", scale=0.02, work=tmp_path)
    assert result["true_batch"] == 10 and result["measured_batch"] == 2
    assert result["flops_per_step"] > 0 and len(result["measured_seconds"]) == 2
    assert result["seconds_per_step"] == pytest.approx(5 * result["measured_seconds"][1])
    assert result["total_steps"] == 20 * 1000  # 20 epochs of 10,000 crops in batches of 10
    hours = dryrun.projection(result, 0.5)
    assert hours == pytest.approx(result["flops_per_step"] * 20000 / (dryrun.H200_PEAK_FLOPS * 0.5) / 3600)
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps(result) + "\n")
    dryrun.main(["--recipes", name, "--out", str(out)])  # already there: skipped, nothing re-run
    assert len(out.read_text().splitlines()) == 1
    assert name in dryrun.table([result], 0.5)


def test_gpu_results_recipes_mode_runs_the_dryrun_at_the_true_batch() -> None:
    import os
    import shlex
    import subprocess

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHON": "python", "OUT": "out", "STEPS": "7"}
    for flags, expected in (([], ["--device", "gpu", "--steps", "7", "--max-batch", "0"]),
                            (["--dry-run"], ["--device", "cpu", "--steps", "2", "--max-batch", "2"])):
        printed = subprocess.run(["bash", "bench/gpu_results.sh", "--recipes", *flags, "--print"], check=True,
                                 capture_output=True, text=True, env=env, cwd=ROOT).stdout.splitlines()
        assert len(printed) == 1, printed  # the recipes alone, not the Stanford runs
        command = shlex.split(printed[0])
        assert command[1] == "bench/recipe_dryrun.py" and command[2:8] == expected
        assert command[-2:] == ["--out", "out/recipe_dryrun.jsonl"]
