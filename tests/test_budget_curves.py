"""bench/budget_curves.py: budgets as overrides, every run once (resumable), the table and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import compose_config, load_bench

budget_curves = load_bench("budget_curves")


def test_budgets_scale_the_experiment_epochs() -> None:
    four = budget_curves.epochs(4, val_every=4)
    assert four(0.25) == ["trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1"]
    assert four(4) == ["trainer.max_epochs=16", "trainer.check_val_every_n_epoch=4"]
    two = budget_curves.epochs(2)
    assert two(0.25) == ["trainer.max_epochs=1", "trainer.limit_train_batches=0.5"]  # half an epoch
    assert two(1) == ["trainer.max_epochs=2"]
    single_stage = budget_curves.half_pretrain(4)
    assert single_stage(4) == ["trainer.max_epochs=16", "model.pretrain_epochs=8"]
    assert single_stage(0.25) == ["trainer.max_epochs=1", "model.pretrain_epochs=0"]  # mask loss from the start


@pytest.mark.parametrize("start", sorted(budget_curves.STARTS))
@pytest.mark.parametrize("method", sorted(budget_curves.METHODS))
def test_every_arm_composes_at_every_budget(method: str, start: str, tmp_path: Path) -> None:
    prepared = {"pseudo_labels": "cam_saliency-0123456789", "classifier": str(tmp_path / "best.ckpt")}
    for arm in budget_curves.METHODS[method].arms:
        for budget in (0.25, 1.0, 4.0):
            overrides = [*(a.format_map(prepared) for a in arm.overrides),
                         *budget_curves.start_overrides(start, arm.overrides), *arm.budget(budget), *budget_curves.COMMON]
            cfg = compose_config("train", overrides, tmp_path)
            assert cfg.data._target_.endswith("StanfordDataModule")
            assert cfg.trainer.max_epochs >= 1
            # every network of the arm is EfficientNet-Lite0, from ImageNet by default, random under --start random
            backbone = cfg.model.net if "net" in cfg.model else cfg.model.backbone
            name = backbone.backbone if "net" in cfg.model else backbone.name
            weights = "random" if start == "random" else "efficientnet_lite0"
            assert (name, backbone.weights) == ("efficientnet_lite0", weights), (arm.label, start)
            if "teacher_net" in cfg.model:
                assert cfg.model.teacher_net.weights == weights


def _fake_run(calls: list[list[str]]):
    def run(argv: list[str], log: Path) -> float:
        calls.append(list(argv))
        run_dir = Path(next(a for a in argv if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True, exist_ok=True)
        seed = int(next((a for a in argv if a.startswith("seed=")), "seed=0").split("=")[1])
        epochs = int(next((a for a in argv if a.startswith("trainer.max_epochs=")), "x=1").split("=")[1])
        (run_dir / "metrics.json").write_text(json.dumps({"test/miou": 0.01 * epochs + 0.004 * seed,
                                                          "val/miou_best": 0.02 * epochs}))
        (run_dir / "report.json").write_text(json.dumps({"miou_majority": 0.2}))
        return 1.0
    return run


def test_measure_runs_each_job_once_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(budget_curves, "run", _fake_run(calls))
    method = budget_curves.Method(
        arms=(budget_curves.Arm("net", ("experiment=x",), budget_curves.epochs(4)),),
        baselines=(budget_curves.Baseline("prior", ("make_priors.py",), "report.json", "miou_majority"),))
    results = budget_curves.measure("toy", method, [0.25, 1.0], [0, 1], tmp_path)
    assert len(calls) == 5  # 2 budgets x 2 seeds + 1 baseline
    assert results["series"]["net"] == {"0.25": [0.01, 0.014], "1": [0.04, 0.044]}
    assert results["baselines"] == {"prior": 0.2}
    budget_curves.measure("toy", method, [0.25, 1.0], [0, 1], tmp_path)
    assert len(calls) == 5  # finished runs are read back
    text = budget_curves.report(results, tmp_path / "docs")
    assert "| net | 1.2 ± 0.2 (n=2) | 4.2 ± 0.2 (n=2) |" in text
    assert "| prior (no training budget) | 20.0 | 20.0 |" in text
    assert results["val"]["net"] == {"0.25": [0.02, 0.02], "1": [0.08, 0.08]}  # best.ckpt's val score, per run
    assert "| net | 2.0 ± 0.0 (n=2) | 8.0 ± 0.0 (n=2) |" in text.split("val mIoU")[1]
    assert (tmp_path / "docs" / "budget_toy.png").stat().st_size > 0
    assert (tmp_path / "docs" / "budget_toy.md").read_text() == text


def test_prepared_values_reach_arms_and_baselines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(budget_curves, "run", _fake_run(calls))
    method = budget_curves.Method(
        arms=(budget_curves.Arm("net", ("experiment=x", "data.prior={labels}"), budget_curves.epochs(4)),),
        baselines=(budget_curves.Baseline("prior", ("make_priors.py", "prior.checkpoint={ckpt}"), "report.json",
                                          "miou_majority", more=(("same run, another key", "miou_majority"),)),),
        prepare=lambda out, start: {"labels": "cam-1", "ckpt": str(out / "c.ckpt")})
    results = budget_curves.measure("toy", method, [1.0], [0], tmp_path)
    assert "data.prior=cam-1" in calls[0] and "experiment=x" in calls[0]
    assert f"prior.checkpoint={tmp_path / 'c.ckpt'}" in calls[1]
    assert len(calls) == 2  # one baseline command for both of its keys
    assert results["baselines"] == {"prior": 0.2, "same run, another key": 0.2}


def test_the_random_start_sets_each_experiments_weights_key() -> None:
    assert budget_curves.start_overrides("random", ["experiment=classifier_stanford", "seed=0"]) == [
        "model.backbone.weights=random"]
    assert budget_curves.start_overrides("random", ["experiment=twins_stanford"]) == ["model.net.weights=random"]
    assert budget_curves.start_overrides("random", ["experiment=maskcontrast_stanford"]) == [
        "model.net.weights=random", "model.frozen_stages=0"]  # no frozen random stages
    assert budget_curves.start_overrides("imagenet", ["experiment=classifier_stanford"]) == []  # the file's
    with pytest.raises(ValueError, match="valid: imagenet, random"):
        budget_curves.start_overrides("efficientnet_lite0", ["experiment=x"])
