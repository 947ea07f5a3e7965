"""``make demo``: its commands compose with the real configs, and its summary step writes one table."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose_config
from usgs.run.demo import main, summarize
from usgs.run.priors import _LOADER_KEYS


def _demo_commands() -> list[list[str]]:
    """The Makefile's demo recipe as argument lists, with $(DEMO) expanded."""
    text = (ROOT / "Makefile").read_text()
    demo_dir = re.search(r"^DEMO \?= (\S+)", text, re.M)
    assert demo_dir, "Makefile should define DEMO ?= <folder>"
    recipe = text.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in recipe.splitlines()[1:] if line.startswith("\t$(PY)")]
    return [shlex.split(line.replace("$(DEMO_ARGS)", "").replace("$(DEMO)", demo_dir.group(1)))[1:] for line in lines]


def test_every_demo_command_composes(tmp_path: Path) -> None:
    commands = _demo_commands()
    scripts = [c[0] for c in commands]
    assert scripts == ["train.py", "evaluate.py", "evaluate.py", "make_priors.py", "evaluate.py", "-m"], scripts
    trained = compose_config("train", commands[0][1:], tmp_path)
    # no input of the demo is computed from masks: its saliency is the label-free estimator's
    assert trained.data.get("saliency") is None and trained.data.prior == "saliency_unsup"
    assert trained.model.saliency_key == "prior" == trained.data.train_transform.saliency_key
    for argv in commands[:5]:
        overrides = [a for a in argv[1:] if not a.startswith("hydra.")]
        cfg = compose_config(argv[0].removesuffix(".py"), overrides, tmp_path)
        if argv[0] == "make_priors.py":  # the prior sees the demo's data and has one cluster per class
            same_images = {k: v for k, v in cfg.data.items() if k not in _LOADER_KEYS}
            assert same_images == {k: v for k, v in trained.data.items() if k not in _LOADER_KEYS}
            assert cfg.prior.k == trained.data.num_classes
            assert cfg.split == "test" and cfg.prior.fit_split == "train"
        if argv[0] == "evaluate.py":
            assert cfg.split == "test" and cfg.task._target_.endswith("KMeansEvaluation")
    assert [c.get("control") for c in (compose_config("evaluate", [a for a in commands[i][1:] if not a.startswith(
        "hydra.")], tmp_path) for i in (1, 2, 4))] == [None, None, "saliency_only"]
    assert commands[5] == ["-m", "usgs.run.demo", commands[1][-1].split("=", 1)[1].rsplit("/", 1)[0]]


def _write_steps(root: Path, trained: float, random_init: float, prior: float, saliency: float = 0.25) -> None:
    for name, value in (("trained", trained), ("random_init", random_init)):
        (root / name).mkdir(parents=True)
        (root / name / "metrics.json").write_text(json.dumps(
            {"kmeans/prototypes/miou": value, "kmeans/prototypes/pixel_accuracy": 0.9, "kmeans/pixels/miou": 0.1}))
    (root / "prior").mkdir()
    (root / "prior" / "report.json").write_text(json.dumps(
        {"miou_hungarian_iou": prior, "pixel_accuracy_hungarian_iou": 0.5, "miou_hungarian": 0.0}))
    (root / "saliency_only").mkdir()
    (root / "saliency_only" / "metrics.json").write_text(json.dumps(
        {"kmeans/saliency_only/miou": saliency, "kmeans/saliency_only/pixel_accuracy": 0.8}))


def test_summary_has_four_rows_with_the_same_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_steps(tmp_path, trained=0.5, random_init=0.2, prior=0.3, saliency=0.35)
    main([str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"trained", "random_init", "prior", "saliency_only"}
    assert {tuple(sorted(row)) for row in summary.values()} == {("kmeans_miou", "pixel_accuracy")}
    assert summary["trained"]["kmeans_miou"] == 0.5 and summary["saliency_only"]["kmeans_miou"] == 0.35
    out = capsys.readouterr().out
    assert "| MaskContrast, trained (last.ckpt) | 50.0 | 90.0 |" in out
    assert "| its input saliency alone (saliency_unsup, one cluster) | 35.0 | 80.0 |" in out
    # the claim is against the best of the three baselines: here saliency_only, not the prior
    assert "best baseline (saliency_only): +15.0 points: learnt more" in out
    assert str(tmp_path / "trained" / "overlays" / "kmeans_prototypes.png") in out


def test_summary_says_when_the_network_does_not_beat_its_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_steps(tmp_path, trained=0.3, random_init=0.2, prior=0.25, saliency=0.32)
    main([str(tmp_path)])
    assert "best baseline (saliency_only): -2.0 points: NOT above its best baseline" in capsys.readouterr().out


def test_a_missing_step_names_its_file(tmp_path: Path) -> None:
    _write_steps(tmp_path, 0.5, 0.2, 0.3)
    (tmp_path / "prior" / "report.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"prior/report.json is missing: run the demo's make_priors.py"):
        summarize(tmp_path)
