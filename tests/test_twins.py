"""Twin training: teacher modes, losses of a step, EMA schedules, fine-tuning, the real configs."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

# the two-view batch builder is shared with the transform tests (tests/ is a package)
from tests.test_twin_views import K, twin_batch
from usgs.methods.losses import CrossEntropyLoss, DiceLoss
from usgs.methods.twins import Twins, TwinsFinetune, load_twin_student, seed_epoch_momentum
from usgs.nets.deeplab import DeepLabV3

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """backbone + head with a ``classifier``, like DeepLabV3, small enough for CPU tests."""

    def __init__(self, num_classes: int = K) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential()
        self.head.classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def make_twins(mode: str, **kwargs: Any) -> Twins:
    torch.manual_seed(0)
    return Twins(
        net=TinyNet(),
        teacher_net=TinyNet(),
        num_classes=4,
        loss=DiceLoss(),
        consistency=nn.MSELoss(reduction="none"),
        teacher_mode=mode,
        num_predictions=K,
        matching="hungarian",
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        **kwargs,
    )


# --- the module --------------------------------------------------------------------------------
def test_seed_epoch_momentum_matches_the_seed_formula() -> None:
    assert seed_epoch_momentum(0, 0.9, 0.999, 10) == pytest.approx(0.999)
    assert seed_epoch_momentum(5, 0.9, 0.999, 10) == pytest.approx(0.9495)
    assert seed_epoch_momentum(10, 0.9, 0.999, 10) == pytest.approx(0.9)


def test_identical_twins_on_identical_views_have_zero_consistency() -> None:
    model = make_twins("mutual")
    model.teacher.load_state_dict(model.net.state_dict())
    batch = twin_batch(2, scale=(1.0, 1.0), hflip=False, photometric=False)
    logged: dict[str, float] = {}
    model.log_dict = lambda values, **_: logged.update({k: float(v.detach()) for k, v in values.items()})  # type: ignore[method-assign]
    model.log = lambda *_, **__: None  # type: ignore[method-assign]
    loss = model.training_step(batch, 0)
    assert logged["train/consistency"] == pytest.approx(0.0, abs=1e-10)
    assert logged["train/seg_student"] == pytest.approx(logged["train/seg_teacher"])
    assert float(loss.detach()) == pytest.approx(2 * logged["train/seg_student"])


@pytest.mark.parametrize("mode", ["mutual", "ema"])
def test_gradients_reach_the_teacher_only_in_mutual_mode(mode: str) -> None:
    model = make_twins(mode)
    model.log = model.log_dict = lambda *_, **__: None  # type: ignore[method-assign]
    model.training_step(twin_batch(2), 0).backward()
    teacher_grads = [p.grad for p in model.teacher.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in model.net.parameters() for g in [g.grad])
    if mode == "mutual":
        assert all(g is not None and g.abs().sum() > 0 for g in teacher_grads)
    else:
        assert all(g is None for g in teacher_grads)
        # EMA teachers start as the student (DINO)
        assert all(torch.equal(a, b) for a, b in zip(model.net.parameters(), model.teacher.parameters()))


def test_param_groups_put_backbones_at_a_tenth() -> None:
    for mode, trained in (("mutual", 2), ("ema", 1), ("none", 1)):
        groups = make_twins(mode).param_groups()
        assert [g.get("lr_scale", 1.0) for g in groups] == [0.1, 1.0] * trained
        assert sum(len(g["params"]) for g in groups) == 4 * trained  # TinyNet: 2 convs x (w, b)


def test_unknown_mode_and_reducing_consistency_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="valid: none, mutual, ema, ema_epoch"):
        make_twins("dino")
    with pytest.raises(ValueError, match="reduction"):
        Twins(TinyNet(), 4, DiceLoss(), nn.MSELoss())


def test_missing_second_view_says_what_to_configure() -> None:
    model = make_twins("mutual")
    batch = twin_batch(2)
    del batch["image2"]
    with pytest.raises(KeyError, match="TwinViews"):
        model.training_step(batch, 0)


def test_ema_epoch_teacher_keeps_its_own_initialisation_and_moves_by_the_seed_formula() -> None:
    # make_twins seeds 0 and builds the student, then the teacher: rebuild both independently.
    torch.manual_seed(0)
    student0, teacher0 = TinyNet(), TinyNet()
    model = make_twins("ema_epoch")
    for t, t0, s0 in zip(model.teacher.parameters(), teacher0.parameters(), student0.parameters()):
        assert torch.equal(t, t0) and not torch.equal(t, s0)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    # The seed's update after epoch 0: m = 0.9 + 0.5 * 0.099 * (1 + cos 0) = 0.999.
    model.log = lambda *_, **__: None  # type: ignore[method-assign]
    model.on_train_epoch_end()
    for t, t0, s0 in zip(model.teacher.parameters(), teacher0.parameters(), student0.parameters()):
        torch.testing.assert_close(t, 0.999 * t0 + 0.001 * s0)
    # One override gives the DINO start (a copy of the student).
    copied = make_twins("ema_epoch", teacher_copies_student=True)
    assert all(torch.equal(t, s) for t, s in zip(copied.teacher.parameters(), student0.parameters()))


class _Batches(torch.utils.data.Dataset):
    def __init__(self, batch: dict[str, Any]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["index"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.batch.items()}


@pytest.mark.parametrize("mode", ["ema", "ema_epoch"])
def test_fit_moves_the_ema_teacher_on_its_schedule(mode: str, tmp_path: Any) -> None:
    model = make_twins(mode)
    start = [p.detach().clone() for p in model.teacher.parameters()]
    loader = DataLoader(_Batches(twin_batch(8)), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader, loader)
    teacher, student = list(model.teacher.parameters()), list(model.net.parameters())
    moved = sum(float((t - s0).abs().sum()) for t, s0 in zip(teacher, start))
    assert moved > 0 and any(not torch.equal(t, s) for t, s in zip(teacher, student))
    expected = (
        0.996 + (1 - 0.996) * (1 - math.cos(math.pi * 3 / 4)) / 2
        if mode == "ema"
        else 0.999 - 0.099 * (1 - math.cos(math.pi / 10)) / 2
    )
    assert float(trainer.callback_metrics["train/momentum"]) == pytest.approx(expected, rel=1e-6)
    assert "val/miou" in trainer.callback_metrics


# --- fine-tuning -------------------------------------------------------------------------------
def test_finetune_loads_everything_but_the_classifier(tmp_path: Any) -> None:
    torch.manual_seed(0)
    twin = Twins(
        DeepLabV3(num_classes=K, backbone="resnet18"),
        3,
        CrossEntropyLoss(),
        nn.L1Loss(reduction="none"),
        teacher_mode="none",
        num_predictions=K,
        matching="majority",
    )
    path = tmp_path / "twin.ckpt"
    torch.save({"state_dict": twin.state_dict()}, path)
    fine = TwinsFinetune(DeepLabV3(num_classes=3, backbone="resnet18"), 3, pretrained=str(path))
    assert fine.fresh_keys == ["head.classifier.weight", "head.classifier.bias"]
    loaded, source = fine.net.state_dict(), twin.net.state_dict()
    assert all(torch.equal(loaded[k], source[k]) for k in source if not k.startswith("head.classifier."))
    assert loaded["head.classifier.weight"].shape == (3, 256, 1, 1)
    groups = fine.param_groups()
    assert groups[0]["lr_scale"] == 0.1
    with pytest.raises(ValueError, match="outside the classifier"):
        load_twin_student(DeepLabV3(num_classes=3, backbone="resnet18", head_channels=128), path)
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        load_twin_student(fine.net, tmp_path / "missing.ckpt")


# --- the real configs --------------------------------------------------------------------------
def write_prior_cache(cfg: Any, prior: str = "kmeans") -> None:
    """A tiny prior cache in the brief's layout: the shapes' GT masks as a 7-cluster 'prior'."""
    from hydra.utils import instantiate
    from PIL import Image

    from usgs.data.prior_store import MANIFEST, prior_dir_name

    data = instantiate(cfg.data, prior=None, _convert_="all")
    raw = data.dataset("train", transform=None)
    folder = Path(cfg.paths.priors_dir) / data.name / "train" / prior_dir_name(prior, "test")
    folder.mkdir(parents=True)
    for i, name in enumerate(raw.ids):
        Image.fromarray(raw.load(i)["mask"].astype(np.uint8)).save(folder / f"{name}.png")
    (folder / MANIFEST).write_text("{}")


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "twins.ipynb"
TINY = [
    "data.image_size=32",
    "data.num_train=8",
    "data.num_val=4",
    "data.num_test=4",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "model.num_predictions=7",
    "model.matching=hungarian",
]


def test_experiment_twins_then_finetune(make_cfg: Any, tmp_path: Path) -> None:
    """experiment=twins on a cached prior -> twins_finetune from its checkpoint (the notebook on such a
    run: tests/test_notebooks.py)."""
    from hydra.utils import instantiate

    from usgs.run.train import train

    # 16 steps with a cross-entropy mask loss (the seed's Dice leaves near-uniform logits this early)
    cfg = make_cfg(["experiment=twins", *TINY, "trainer.max_epochs=8", "model.loss._target_=torch.nn.CrossEntropyLoss",
                    "+model.loss.ignore_index=255"])
    write_prior_cache(cfg)
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(metrics["train/loss"]) and metrics["test/miou"] is not None
    ckpts = sorted((tmp_path / "checkpoints").glob("last.ckpt"))
    assert ckpts, "twin training wrote no checkpoint"
    # fine-tune from it: the student's weights arrive (here every one: 7 predictions = 7 classes) ...
    fine_dir = tmp_path / "finetune"
    fine = make_cfg(
        ["experiment=twins_finetune", *TINY[:-2], f"model.pretrained={ckpts[0]}"], run_dir=fine_dir
    )
    student = {k[4:]: v for k, v in torch.load(ckpts[0], weights_only=False)["state_dict"].items()
               if k.startswith("net.")}
    pretrained = instantiate(fine.model)
    torch.manual_seed(0)
    scratch = instantiate(fine.model, pretrained=None)
    loaded = pretrained.net.state_dict()
    assert pretrained.fresh_keys == [] and loaded.keys() == student.keys()
    assert all(torch.equal(loaded[k], student[k]) for k in student)
    assert not all(torch.equal(v, scratch.net.state_dict()[k]) for k, v in student.items())
    # ... and they help: on the fine-tune's first validation batch the pretrained start has a lower loss than
    # random init (the prior here is the masks, so the twin learnt the very classes it is fine-tuned on)
    data = instantiate(fine.data, _convert_="all")
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        start = {name: F.cross_entropy(model.eval().net(batch["image"]), batch["mask"], ignore_index=255).item()
                 for name, model in (("pretrained", pretrained), ("scratch", scratch))}
    assert start["pretrained"] < start["scratch"] - 0.1, start  # measured: 1.73 vs 1.94
    train(fine)
    assert json.loads((fine_dir / "metrics.json").read_text())["test/miou"] is not None
