"""What train.py refuses before it starts, and the files it leaves."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from usgs.atomic import atomic_write
from usgs.run.train import train

TINY = ["experiment=supervised", "data.image_size=32", "data.batch_size=4", "trainer.max_epochs=1",
        "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"]


def test_wrong_config_values_stop_before_any_work(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg([*TINY, "trainer.max_epochs=abc", "data.batch_size=-4", "model.optimizer.lr=0"])
    with pytest.raises(ValueError) as error:
        train(cfg)
    message = str(error.value)
    assert "trainer.max_epochs='abc': expected an integer >= -1" in message
    assert "data.batch_size=-4: expected an integer >= 1" in message
    assert "model.optimizer.lr=0: expected a number > 0" in message
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_group_node_without_target_is_an_error_naming_the_key(group: str, make_cfg) -> None:
    with pytest.raises(ValueError, match=rf"{group}\.oops has no _target_"):
        train(make_cfg([*TINY, "train=false", f"+{group}.oops.save_dir=somewhere"]))


def test_written_files_get_normal_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", "text")
        atomic_write(tmp_path / "sub" / "b.bin", b"\x00")
    finally:
        os.umask(umask)
    for path in (tmp_path / "a.txt", tmp_path / "sub" / "b.bin"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert (tmp_path / "a.txt").read_text() == "text"
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary file left behind
