"""predict.py on messy folders (issue 28): unreadable files skipped with one warning each and listed at
the end (``strict=true`` stops), other files listed once, large images predicted in blocks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.test_image_modes import RGB, palette_image
from usgs.errors import UnreadableFileError


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from tests.conftest import compose_config
    from usgs.callbacks import StoreConfig
    from usgs.run.start import resolved_config

    folder = tmp_path_factory.mktemp("ckpt")
    cfg = compose_config("train", ["experiment=supervised", "data.image_size=32", "data.num_train=2",
                                   "data.num_val=2", "data.num_test=2", "data.batch_size=2"], folder)
    model = instantiate(cfg.model, _convert_="all")
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[StoreConfig(resolved_config(cfg))])
    trainer.fit(model, datamodule=instantiate(cfg.data, _convert_="all"))
    trainer.save_checkpoint(folder / "tiny.ckpt")
    return folder / "tiny.ckpt"


def test_predict_skips_unreadable_files_and_lists_them(tiny_checkpoint, tmp_path, caplog, capsys) -> None:
    from usgs.run.predict import predict

    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    Image.fromarray(RGB).save(source / "good.png")
    palette_image(True).save(source / "sub" / "palette.png")
    (source / "broken.png").write_bytes(b"not a png")
    (source / "notes.txt").write_text("x")
    (source / "meta.json").write_text("{}")
    cfg = OmegaConf.create({"ckpt_path": str(tiny_checkpoint), "input": str(source), "output": str(tmp_path / "out"),
                            "device": "cpu", "progress": False, "overlays": False})
    with caplog.at_level(logging.WARNING):
        written = predict(cfg)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["good.png", "sub/palette.png"]
    assert caplog.text.count("skipped") == 1 and "broken.png" in caplog.text
    assert caplog.text.count("not images are left out") == 1 and "1 .json, 1 .txt" in caplog.text
    assert f"skipped 1 unreadable file(s) (strict=true stops at the first): {source / 'broken.png'}" in capsys.readouterr().out
    cfg.strict = True
    with pytest.raises(UnreadableFileError, match="broken.png"):
        predict(cfg)


def test_large_images_are_predicted_in_blocks(tiny_checkpoint) -> None:
    from usgs.run.checkpoints import load_checkpoint
    from usgs.run.predict import predict_image

    _, module = load_checkpoint(tiny_checkpoint)
    module.eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    whole = predict_image(module, image, torch.device("cpu"))
    # blocks that see the whole image as context assemble exactly the whole-image prediction
    assert torch.equal(predict_image(module, image, torch.device("cpu"), tile=32, context=60), whole)
    blocks = predict_image(module, image, torch.device("cpu"), tile=32, context=8)
    assert blocks.shape == whole.shape == (40, 60)
