"""predict.py on one's own images: every method family's checkpoint (fast_dev_run on shapes), images of
odd sizes in a folder tree, class-id PNGs at each image's own resolution plus overlays."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from usgs.callbacks import StoreConfig
from usgs.run.predict import list_images, predict
from usgs.run.prior_auto import ensure_priors
from usgs.run.start import resolved_config

TINY = ["data.image_size=32", "data.num_train=4", "data.num_val=2", "data.num_test=2", "data.batch_size=2",
        "data.eval_batch_size=2"]
FAMILIES = {  # experiment -> extra overrides (CPU-sized nets)
    "supervised": ["+model.sliding_window=[32,16]"],  # tiled prediction of larger images
    "maskcontrast": [],
    "twins": ["model.num_predictions=6", "prior_overrides=['prior.k=6']"],
    "classifier": [],
    "single_stage": [],
    "clusternet": ["data=shapes"],
}


def _checkpoint(cfg, path: Path) -> Path:
    ensure_priors(cfg)
    if OmegaConf.select(cfg, "model.net.backbone") in ("resnet50", "resnet101"):
        cfg.model.net.backbone = "resnet18"
    datamodule, model = instantiate(cfg.data, _convert_="all"), instantiate(cfg.model, _convert_="all")
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[StoreConfig(resolved_config(cfg))])
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("experiment", sorted(FAMILIES))
def test_predict_writes_ids_and_overlays_at_image_size(experiment: str, make_cfg: Callable, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    extra = FAMILIES[experiment]
    cfg = make_cfg([f"experiment={experiment}", *[o for o in extra if o.startswith("data=")], *TINY,
                    *[o for o in extra if not o.startswith("data=")]])
    ckpt = _checkpoint(cfg, tmp_path / "tiny.ckpt")
    rng = np.random.default_rng(0)
    sizes = {"a.jpg": (37, 53), "sub/b.png": (70, 41)}
    for name, (h, w) in sizes.items():
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "in" / name)
    run = OmegaConf.create({"ckpt_path": str(ckpt), "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                            "device": "cpu", "progress": False})
    written = predict(run)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["a.png", "sub/b.png"]
    num_outputs = int(cfg.model.get("num_predictions") or cfg.data.num_classes)
    for name, size in sizes.items():
        ids = np.asarray(Image.open(tmp_path / "out" / Path(name).with_suffix(".png")))
        assert ids.shape == size and ids.dtype == np.uint8
        assert int(ids.max()) < max(num_outputs, cfg.data.num_classes + 1)  # cluster / class ids, no garbage
        overlay = np.asarray(Image.open(tmp_path / "out" / "overlays" / Path(name).with_suffix(".png")))
        assert overlay.ndim == 3 and overlay.shape[0] >= 192  # titled tiles of >= 192 px


def test_input_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither an image file nor a folder"):
        list_images(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no image"):
        list_images(tmp_path)
