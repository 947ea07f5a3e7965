"""bench/lr_sweep.py: val-only scoring, every run once (resumable), the rule that picks the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import compose_config, load_bench

lr_sweep = load_bench("lr_sweep")


@pytest.mark.parametrize("experiment", sorted(lr_sweep.SWEEPS))
def test_every_grid_holds_the_current_default_and_composes(experiment: str, tmp_path: Path) -> None:
    sweep = lr_sweep.SWEEPS[experiment]
    assert lr_sweep.current_lr(experiment) in sweep.lrs  # the rule compares with a measured default
    cfg = compose_config("train", [f"experiment={experiment}", f"model.optimizer.lr={sweep.lrs[0]}", "test=false",
                                   *lr_sweep.COMMON], tmp_path)
    assert cfg.model.optimizer.lr == sweep.lrs[0] and cfg.test is False


def test_rule_keeps_the_default_inside_the_seed_spread() -> None:
    results = {"0.01": [0.28, 0.29], "0.03": [0.27, 0.31], "0.1": [0.2, 0.21]}
    assert lr_sweep.choose(results, 0.01) == 0.01  # 0.29 vs 0.285: inside the spread of 0.03 (0.02)
    results["0.03"] = [0.33, 0.34]
    assert lr_sweep.choose(results, 0.01) == 0.03
    assert lr_sweep.choose({"0.1": [0.2], "0.3": [0.4]}, 0.05) == 0.3  # default not measured: the best


def _fake_run(calls: list[list[str]]):
    def run(argv: list[str], log: Path) -> float:
        calls.append(list(argv))
        run_dir = Path(next(a for a in argv if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True, exist_ok=True)
        if argv[0] == "train.py":
            lr = float(next(a for a in argv if a.startswith("model.optimizer.lr=")).split("=")[1])
            seed = int(next(a for a in argv if a.startswith("seed=")).split("=")[1])
            (run_dir / "metrics.json").write_text(json.dumps({"val/miou_best": lr + 0.001 * seed}))
        else:
            (run_dir / "metrics.json").write_text(json.dumps({"kmeans/prototypes/miou": 0.5}))
        return 1.0
    return run


def test_sweep_scores_on_val_only_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[list[str]] = []
    monkeypatch.setitem(lr_sweep.run_once.__globals__, "run", _fake_run(calls))  # what run_once calls
    monkeypatch.setitem(lr_sweep.SWEEPS, "maskcontrast", lr_sweep.Sweep((0.02, 0.05), score="kmeans"))
    lr_sweep.main(["maskcontrast", "--seeds", "0", "1", "--out", str(tmp_path), "--default", "0.05"])
    trains = [c for c in calls if c[0] == "train.py"]
    evals = [c for c in calls if c[0] == "evaluate.py"]
    assert len(trains) == 4 and all("test=false" in c for c in trains)
    assert len(evals) == 4 and all("split=val" in c for c in evals)
    assert all(any(a.endswith("checkpoints/last.ckpt") for a in c) for c in evals)  # label-free: last.ckpt
    saved = json.loads((tmp_path / "maskcontrast.json").read_text())
    assert saved["results"] == {"0.02": [0.5, 0.5], "0.05": [0.5, 0.5]} and saved["chosen"] == 0.05
    assert "0.05 (current default) **chosen**" in capsys.readouterr().out
    calls.clear()
    lr_sweep.main(["maskcontrast", "--seeds", "0", "1", "--out", str(tmp_path), "--default", "0.05"])
    assert calls == []  # every run read back


def test_label_using_methods_are_scored_by_val_miou_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setitem(lr_sweep.run_once.__globals__, "run", _fake_run(calls))
    monkeypatch.setitem(lr_sweep.SWEEPS, "classifier_stanford", lr_sweep.Sweep((0.05, 0.5)))
    lr_sweep.main(["classifier_stanford", "--seeds", "0", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "classifier_stanford.json").read_text())
    assert saved["results"]["0.5"] == pytest.approx([0.5, 0.501]) and saved["chosen"] == 0.5
    assert all(c[0] == "train.py" for c in calls)


def test_set_adds_its_overrides_to_every_run_after_the_experiment(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setitem(lr_sweep.run_once.__globals__, "run", _fake_run(calls))
    monkeypatch.setitem(lr_sweep.SWEEPS, "classifier_stanford", lr_sweep.Sweep((0.05, 0.5)))
    lr_sweep.main(["classifier_stanford", "--seeds", "0", "--out", str(tmp_path), "--set", "model.frozen_stages=3",
                   "trainer.max_epochs=2"])
    assert len(calls) == 2
    for argv in calls:  # after experiment=..., so they override the file; before the swept lr
        assert argv.index("model.frozen_stages=3") > argv.index("experiment=classifier_stanford")
        assert "trainer.max_epochs=2" in argv
        assert argv.index("trainer.max_epochs=2") < next(i for i, a in enumerate(argv) if a.startswith("model.optimizer.lr="))
