"""Label-free methods never read the ground truth: random masks give bit-identical checkpoints.

Each label-free experiment is trained twice with the same seed, the second time with every mask
replaced by random labels, with validation (and its sanity check) running as by default. Validation
reads the masks to log val/miou, so the two runs' val/miou differ; nothing may act on it, so every
checkpoint they write holds the same tensors, and there is no best.ckpt. A callback that draws from
torch's global generator as often as the masks say stands for any validation, callback or logging
code that uses randomness: training must not share that generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tests.test_twins import write_prior_cache
from usgs.data.shapes import CLASS_NAMES, ShapesDataset
from usgs.run.train import train

SMALL = ["data.image_size=32", "data.num_train=8", "data.num_val=4", "data.num_test=4", "data.batch_size=4",
         "data.eval_batch_size=4", "trainer.max_epochs=2", "callbacks.prediction_overlays=null",
         "+callbacks.mask_dependent_draws._target_=tests.test_label_free.MaskDependentDraws"]
LABEL_FREE = {
    "maskcontrast": ["model.net.head_channels=32", "model.queue_size=16"],
    "twins": ["model.num_predictions=7", "model.matching=hungarian", "model.net.head_channels=32"],
    # 8 images -> 40 five-crops; two batches an epoch as for the others
    "stego": ["model.res=32", "trainer.limit_train_batches=2"],
}
# Parts that learn from the train masks by design, with their input detached: STEGO's linear probe.
READS_MASKS = {"stego": ("linear_probe.",)}


class MaskDependentDraws(pl.Callback):
    """Draws from the global generator a number of times that depends on the validation masks."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        torch.rand(int(batch["mask"].sum()) % 97 + 1)


def _random_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    load = ShapesDataset.load

    def load_with_random_mask(self: ShapesDataset, index: int) -> dict[str, np.ndarray]:
        raw = load(self, index)
        rng = np.random.default_rng([12345, len(self.split), index])  # its own generator, not torch's
        raw["mask"] = rng.integers(0, len(CLASS_NAMES), raw["mask"].shape).astype(np.uint8)
        return raw

    monkeypatch.setattr(ShapesDataset, "load", load_with_random_mask)


@pytest.mark.parametrize("experiment", sorted(LABEL_FREE))
def test_random_masks_give_identical_checkpoints(experiment: str, make_cfg, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {}
    for name in ("true_masks", "random_masks"):
        cfg = make_cfg([f"experiment={experiment}", *SMALL, *LABEL_FREE[experiment]], run_dir=tmp_path / name)
        if cfg.data.get("prior") == "kmeans":  # twins: a stand-in prior, the same input in both runs
            write_prior_cache(cfg)
        if name == "random_masks":  # MaskContrast's saliency_unsup is computed (prior_auto) after this
            _random_masks(monkeypatch)
        train(cfg)
        runs[name] = tmp_path / name
    files = {name: sorted(p.name for p in (run / "checkpoints").iterdir()) for name, run in runs.items()}
    assert files["true_masks"] == files["random_masks"] == ["last.ckpt"]  # no best.ckpt chosen on labels
    a, b = (torch.load(run / "checkpoints" / "last.ckpt", weights_only=False) for run in runs.values())
    assert a["global_step"] == b["global_step"] == 4
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    supervised = READS_MASKS.get(experiment, ())
    assert not [k for k in different if not k.startswith(supervised)], f"weights differ with random masks: {different[:5]}"
    if supervised:  # the part that reads masks did see the random ones
        assert any(k.startswith(supervised) for k in different)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in runs.values()]
    assert metrics[0]["train/loss"] == metrics[1]["train/loss"]
    assert metrics[0]["val/miou"] != metrics[1]["val/miou"]  # the masks did change, and validation saw them


SAMPLER = "data.train_sampler={_target_:usgs.data.sampling.rare_class_sampler,_partial_:true,rare_classes:[3]}"
EARLY_STOP = ["+callbacks.early_stopping._target_=pytorch_lightning.callbacks.EarlyStopping",
              "+callbacks.early_stopping.monitor=val/miou"]


@pytest.mark.parametrize("experiment", sorted(LABEL_FREE))
@pytest.mark.parametrize(("overrides", "named"), [
    ([SAMPLER], "data.train_sampler=usgs.data.sampling.rare_class_sampler"),
    (["data.prior=cam_saliency"], "data.prior=cam_saliency"),
    (EARLY_STOP, "callbacks.early_stopping acts on val/miou"),
])
def test_a_mask_reading_component_stops_a_label_free_run_at_start_up(
        experiment: str, overrides: list[str], named: str, make_cfg, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run started work before refusing")

    monkeypatch.setattr("usgs.run.train.ensure_priors", no_work)  # refused before any prior is computed
    cfg = make_cfg([f"experiment={experiment}", *SMALL, *LABEL_FREE[experiment], *overrides])
    with pytest.raises(ValueError, match=named.replace("[", r"\[")):
        train(cfg)


def test_a_method_that_learns_from_labels_keeps_its_sampler(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(["experiment=supervised", *SMALL, SAMPLER, "trainer.max_epochs=1", "test=false"])
    train(cfg)
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
