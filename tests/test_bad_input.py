"""Drills of bad input (issue 28): every user error ends the entry point with one ``error: ...`` line
naming the file or key and exit status 2, nothing earlier in the run directory or cache changes, and
no checkpoint runs code. Entry points run in-process through ``run_entry`` (exit status and stderr
included); two subprocess runs check the real command line."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from usgs.atomic import atomic_write
from usgs.data import io
from usgs.errors import DataError, RunDirInUseError, UnreadableFileError
from usgs.run.entry import run_entry, user_message
from usgs.run.lock import lock_run_dir
from usgs.run.resume import last_checkpoint
from usgs.run.start import check_free_space, start_run

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["logger=csv", "data.num_workers=0", "experiment=supervised", "data.image_size=32",
         "data.batch_size=2", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
         "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
_SCRIPTS: dict[str, ModuleType] = {}


def _script(name: str) -> ModuleType:
    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"entry_{name}", ROOT / f"{name}.py")
        assert spec and spec.loader
        _SCRIPTS[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_SCRIPTS[name])
    return _SCRIPTS[name]


def cli(name: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``python <name>.py <args>`` in this process: (exit status, the one ``error:`` line)."""
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")  # Hydra finds conf/ beside the script, as when run
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(SystemExit) as stop:
            run_entry(_script(name).main)
    finally:
        GlobalHydra.instance().clear()
        logging.getLogger().handlers.clear()  # Hydra's job logging (a file in tmp_path)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    return int(stop.value.code), errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file's hash but the lock file's (a run that stops still took the lock)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


class _Marker:
    """Unpickling this calls open(path, "w"): the file appears if a loader runs code from a pickle."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.path, "w")


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "global_step": 1, "state_dict": {}, "loops": {}, "optimizer_states": [],
                "usgs_config": {"model": {}}, "payload": _Marker(marker)}, path)
    return path


# --- config errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "named"), [
    (["trainer.max_epoch=3"], "trainer.max_epoch"),                        # typo in a key
    (["experiment=twinz"], "experiment/twinz"),                            # unknown config option
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc'"),              # wrong type
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1"),                  # no limit without max_steps
    (["data.batch_size=0"], "data.batch_size=0"),                          # out of range
])
def test_config_errors_stop_at_start_in_one_line(args, named, tmp_path, monkeypatch, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 1\n")  # an earlier run's
    before = snapshot(run)
    status, line = cli("train", [*SMALL, f"hydra.run.dir={run}", *args], monkeypatch, capsys)
    assert status == 2 and named in line, line
    assert {k: v for k, v in snapshot(run).items() if not k.startswith((".hydra", "train.log"))} == before


@pytest.mark.parametrize(("args", "named"), [
    (["model.net.backbone=resnet5"], "Unknown backbone 'resnet5'; valid names: resnet101"),  # constructor refuses
    (["+model.net.nonsense=1"], "unexpected keyword argument 'nonsense' [key model.net]"),
    (["+callbacks.oops.save_dir=somewhere"], "callbacks.oops has no _target_"),
    (["model.net._target_=usgs.nets.nope.Net"], "no such _target_ 'usgs.nets.nope.Net'"),
])
def test_values_refused_by_a_constructor_are_one_line_naming_the_key(args, named, tmp_path, monkeypatch,
                                                                      capsys) -> None:
    status, line = cli("train", [*SMALL, f"hydra.run.dir={tmp_path}", *args], monkeypatch, capsys)
    assert status == 2 and named in line, line


def test_a_missing_mandatory_value_names_it(tmp_path, monkeypatch, capsys) -> None:
    status, line = cli("predict", [f"hydra.run.dir={tmp_path}", "input=x"], monkeypatch, capsys)
    assert status == 2 and "ckpt_path" in line, line


def test_max_epochs_minus_one_with_max_steps_is_no_limit(make_cfg) -> None:
    from usgs.run.config_checks import check_config

    check_config(make_cfg(["trainer.max_epochs=-1", "+trainer.max_steps=3"]))  # accepted: max_steps bounds it


# --- broken data ------------------------------------------------------------------------------------------
def test_broken_folder_datasets(tmp_path, monkeypatch, capsys) -> None:
    folder = ["data=folder", "data.num_workers=0", "data.batch_size=2", "trainer.max_epochs=1", "logger=csv"]
    status, line = cli("train", [*folder, f"data.root={tmp_path}/absent", f"hydra.run.dir={tmp_path}/a"],
                       monkeypatch, capsys)
    assert status == 2 and f"{tmp_path}/absent" in line, line
    for stem, ext in (("x", ".png"), ("x", ".jpg")):  # one id, two pictures
        (tmp_path / "d" / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "d" / "images" / f"{stem}{ext}")
    (tmp_path / "d" / "masks").mkdir()
    status, line = cli("train", [*folder, f"data.root={tmp_path}/d", f"hydra.run.dir={tmp_path}/b"],
                       monkeypatch, capsys)
    assert status == 2 and "two images with the stem 'x'" in line, line


def test_a_data_loader_worker_error_is_its_message() -> None:
    wrapped = UnreadableFileError("Caught UnreadableFileError in DataLoader worker process 0.\nOriginal Traceback "
                                  "(most recent call last):\n  File ...\nusgs.errors.UnreadableFileError: "
                                  "cannot decode image file /d/1.png: OSError: truncated")
    assert user_message(wrapped) == "cannot decode image file /d/1.png: OSError: truncated"


# --- outputs: unwritable, full disk ------------------------------------------------------------------------
def test_an_unwritable_run_directory_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    status, line = cli("train", [*SMALL, f"hydra.run.dir={tmp_path}/file/run"], monkeypatch, capsys)
    assert status == 2 and f"{tmp_path}/file/run" in line and "Not a directory" in line, line


def test_a_full_disk_fails_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    atomic_write(target, b"old")

    def full(fd: int, mode: str):  # the write of a full disk
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("usgs.atomic.os.fdopen", full)
    with pytest.raises(OSError) as err:
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert user_message(err.value) == (f"No space left on device: {target} (the disk is full: free some space "
                                       "or write elsewhere (hydra.run.dir=..., paths.log_dir=...))")


def test_too_little_free_space_warns_before_training(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr("usgs.run.start.shutil.disk_usage", lambda _: type("U", (), {"free": 10 * 2**20})())
    with caplog.at_level(logging.WARNING):
        check_free_space(tmp_path, 300 * 2**20, "a checkpoint")
    assert "only 10 MB free" in caplog.text and "about 300 MB" in caplog.text


# --- one run per directory ---------------------------------------------------------------------------------
def test_a_directory_in_use_stops_the_second_run_and_a_dead_runs_lock_is_taken_over(make_cfg, tmp_path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(  # the first run: holds the lock, as train.py does from its start
        [sys.executable, "-c", "import sys, time; from usgs.run.lock import lock_run_dir; "
         "lock_run_dir(sys.argv[1]); print('locked', flush=True); time.sleep(120)", str(run)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        (run / "config.yaml").write_text("seed: 1\n")
        before = snapshot(run)
        with pytest.raises(RunDirInUseError) as err:
            start_run(make_cfg(["seed=2"], run_dir=run))
        assert str(run) in str(err.value) and f"PID {holder.pid}" in str(err.value)
        assert snapshot(run) == before  # the first run's files are all its own
    finally:
        holder.kill()  # kill -9: no clean-up, the lock file stays behind
        holder.wait()
    assert (run / ".lock").read_text().strip() == str(holder.pid)
    start_run(make_cfg(["seed=1"], run_dir=run))  # the lock died with its process
    assert (run / ".lock").read_text().strip() == str(os.getpid())
    assert lock_run_dir(run) == run / ".lock"  # this process holds it: taking it again is a no-op


# --- untrusted checkpoints -----------------------------------------------------------------------------------
def test_the_marker_checkpoint_would_run_code_without_weights_only(tmp_path) -> None:
    marker = tmp_path / "marker"
    torch.load(_malicious_checkpoint(tmp_path / "evil.ckpt", marker), weights_only=False)
    assert marker.exists()  # so the refusals below prove something


@pytest.mark.parametrize("entry", ["evaluate", "predict", "train_resume", "prior_checkpoint"])
def test_a_malicious_checkpoint_is_refused_by_every_entry_point(entry, tmp_path, monkeypatch, capsys) -> None:
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    ckpt = _malicious_checkpoint(run / "checkpoints" / "last.ckpt", marker)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    name, args = {
        "evaluate": ("evaluate", [f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}/eval"]),
        "predict": ("predict", [f"ckpt_path={ckpt}", f"input={tmp_path}/in", f"hydra.run.dir={tmp_path}/pred"]),
        "train_resume": ("train", [*SMALL, "resume=true", f"hydra.run.dir={run}"]),
        "prior_checkpoint": ("make_priors", ["prior=cam_saliency", f"prior.checkpoint={ckpt}",
                                             f"paths.priors_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/p"]),
    }[entry]
    before = snapshot(run)
    status, line = cli(name, args, monkeypatch, capsys)
    assert status == 2 and str(ckpt) in line and "refused" in line and "open'" in line, line
    assert not marker.exists()
    hydra_own = (".hydra", "train.log")  # Hydra's record of each invocation, written before the run starts
    assert {k: v for k, v in snapshot(run).items() if not k.startswith(hydra_own)} == before
    assert not (tmp_path / "cache").exists()


def test_a_checkpoint_config_naming_a_function_is_refused(tmp_path) -> None:
    from usgs.nets.weights import WeightsFileError
    from usgs.run.checkpoints import load_checkpoint

    marker = tmp_path / "marker"
    config = {"model": {"_target_": "usgs.methods.supervised.SupervisedSegmentation",
                        "net": {"_target_": "usgs.atomic.atomic_write", "path": str(marker), "data": "x"}}}
    torch.save({"state_dict": {}, "usgs_config": config}, tmp_path / "c.ckpt")
    with pytest.raises(WeightsFileError, match=r"would build 'usgs.atomic.atomic_write' \(model.net._target_\)"):
        load_checkpoint(tmp_path / "c.ckpt")
    assert not marker.exists()


def test_truncated_foreign_and_weights_only_checkpoints_are_named(make_cfg, tmp_path) -> None:
    from usgs.nets.weights import WeightsFileError
    from usgs.run.checkpoints import load_checkpoint

    good = tmp_path / "good.ckpt"
    torch.save({"epoch": 0, "state_dict": {"w": torch.zeros(1000)}, "usgs_config": {}}, good)
    (tmp_path / "cut.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save({"w": torch.zeros(3)}, tmp_path / "plain.pth")
    cases = {"cut.ckpt": "truncated or not a PyTorch file", "plain.pth": "has no 'usgs_config'"}
    for name, expected in cases.items():
        with pytest.raises(WeightsFileError, match=expected) as err:
            load_checkpoint(tmp_path / name)
        assert user_message(err.value).startswith(f"checkpoint {tmp_path / name}")
    (tmp_path / "checkpoints").mkdir()
    good.rename(tmp_path / "checkpoints" / "last.ckpt")  # no optimizer state: not a checkpoint to resume
    with pytest.raises(WeightsFileError, match="holds no training state"):
        last_checkpoint(tmp_path)


# --- resume says what it did ----------------------------------------------------------------------------------
def test_resume_says_epoch_and_step(tmp_path, caplog) -> None:
    (tmp_path / "checkpoints").mkdir()
    torch.save({"epoch": 3, "global_step": 120, "state_dict": {}, "loops": {}, "optimizer_states": []},
               tmp_path / "checkpoints" / "last.ckpt")
    with caplog.at_level(logging.INFO):
        assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert "resuming from epoch 3, step 120" in caplog.text


def test_a_resumed_prior_cache_says_how_many_images_were_done(tmp_path, caplog) -> None:
    from tests.test_priors_cache import KilledPrior, ToyDataset
    from usgs.priors.cache import compute_prior

    kw: dict[str, object] = {"k": 3, "local_k": 2, "samples_per_image": 32, "batch_size": 3}
    with pytest.raises(KeyboardInterrupt):  # killed at image 7: batches [0..2] and [3..5] are done
        compute_prior(KilledPrior(die_at=7, **kw), ToyDataset(), tmp_path, {}, progress=False)
    with caplog.at_level(logging.INFO):
        compute_prior(KilledPrior(**kw), ToyDataset(), tmp_path, {}, progress=False)
        compute_prior(KilledPrior(**kw), ToyDataset(), tmp_path, {}, progress=False)
    assert "resuming: 6 of 10 images done (per-image states" in caplog.text
    assert "cache complete: 10 of 10 images done, nothing to compute" in caplog.text


# --- image modes -------------------------------------------------------------------------------------------
GREY = (np.arange(12).reshape(3, 4) * 20).astype(np.uint8)
RGB = np.stack([GREY, 255 - GREY, GREY // 2], axis=-1)


def _palette_image(transparent: bool) -> Image.Image:
    image = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) % 3, "L").convert("P")
    image.putpalette([10, 20, 30, 200, 0, 0, 0, 200, 0])
    if transparent:
        image.info["transparency"] = 1
    return image


@pytest.mark.parametrize(("mode", "make", "suffix", "pixel"), [
    ("1", lambda: Image.fromarray(GREY > 100), ".png", [255, 255, 255]),
    ("L", lambda: Image.fromarray(GREY), ".png", [220, 220, 220]),
    ("LA", lambda: Image.fromarray(np.stack([GREY, GREY], -1), "LA"), ".png", [220, 220, 220]),
    ("P", lambda: _palette_image(False), ".png", [0, 200, 0]),
    ("P", lambda: _palette_image(True), ".png", [0, 200, 0]),  # colours kept, transparency dropped
    ("RGB", lambda: Image.fromarray(RGB), ".png", [220, 35, 110]),
    ("RGBA", lambda: Image.fromarray(np.dstack([RGB, GREY]), "RGBA"), ".png", [220, 35, 110]),
    ("CMYK", lambda: Image.fromarray(RGB).convert("CMYK"), ".tif", [220, 35, 110]),
])
def test_eight_bit_modes_read_as_rgb(mode, make, suffix, pixel, tmp_path) -> None:
    path = tmp_path / f"image{suffix}"
    make().save(path)
    with Image.open(path) as image:
        assert image.mode == mode
    rgb = io.read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 4, 3)
    assert rgb[2, 3].tolist() == pixel


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_wide_grey_is_scaled_by_its_range_with_one_warning(mode, tmp_path, caplog) -> None:
    values = GREY.astype(np.int64) * 200 + 1000  # 1000 .. 45000: all 255 under PIL's convert("RGB")
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    for name in ("a.tif", "b.tif"):
        Image.frombytes(mode, (4, 3), values.astype(dtype).tobytes()).save(tmp_path / name)
    with caplog.at_level(logging.WARNING):
        first, _ = io.read_rgb(tmp_path / "a.tif"), io.read_rgb(tmp_path / "b.tif")
    assert first[..., 0].tolist()[0] == [0, 23, 46, 70] and first.max() == 255
    assert caplog.text.count("scaled by its own range") == 1  # once per folder, not per image


def test_other_modes_are_refused_naming_the_mode(tmp_path) -> None:
    Image.fromarray(GREY.astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match="float.tif has PIL mode F"):
        io.read_rgb(tmp_path / "float.tif")
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png must be a single-channel.*got mode RGB"):
        io.read_index_png(tmp_path / "rgb.png")


@pytest.mark.parametrize(("mode", "make"), [
    ("1", lambda ids: Image.fromarray(ids > 0)),
    ("L", lambda ids: Image.fromarray(ids)),
    ("LA", lambda ids: Image.fromarray(np.stack([ids, np.full_like(ids, 7)], -1), "LA")),
    ("P", lambda ids: Image.fromarray(ids, "L").convert("P")),
    ("I;16", lambda ids: Image.fromarray(ids.astype(np.uint16))),
    ("I", lambda ids: Image.frombytes("I", (4, 3), ids.astype("<i4").tobytes())),
])
def test_masks_keep_their_ids_in_every_mode(mode, make, tmp_path) -> None:
    ids = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1]], dtype=np.uint8) * (1 if mode == "1" else 255)
    if mode not in ("1",):
        ids = np.where(ids > 0, 255, 3).astype(np.uint8)  # ignore (255) and class 3: never rescaled
    path = tmp_path / ("mask.tif" if mode == "I" else "mask.png")
    make(ids).save(path)
    with Image.open(path) as image:
        assert image.mode == mode
    expected = (ids > 0).astype(np.uint8) if mode == "1" else ids
    assert io.read_index_png(path).tolist() == expected.tolist()


def test_wide_masks_with_ids_above_255_are_refused(tmp_path) -> None:
    Image.fromarray(np.full((3, 4), 300, dtype=np.uint16)).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m.png \(mode I;16\) holds values 300..300.*never rescaled"):
        io.read_index_png(tmp_path / "m.png")


def test_exif_orientation_turns_image_and_mask_alike(tmp_path) -> None:
    ids = np.arange(6, dtype=np.uint8).reshape(2, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(np.repeat(ids[..., None] * 40, 3, axis=2)).save(tmp_path / "i.png", exif=exif)
    Image.fromarray(ids).save(tmp_path / "m.png", exif=exif)
    image, mask = io.read_rgb(tmp_path / "i.png"), io.read_index_png(tmp_path / "m.png")
    assert mask.tolist() == np.rot90(ids, k=-1).tolist()
    assert (image[..., 0] // 40).tolist() == mask.tolist()


# --- predict on messy folders ----------------------------------------------------------------------------------
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
    _palette_image(True).save(source / "sub" / "palette.png")
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


# --- the real command line -----------------------------------------------------------------------------------
def test_the_command_line_exits_with_status_2_and_one_line(tmp_path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    plain = subprocess.run([sys.executable, "train.py", "trainer.max_epoch=3", f"hydra.run.dir={tmp_path}"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1].startswith("error: Could not override 'trainer.max_epoch'")


def test_hydra_full_error_gives_the_traceback(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "trainer.max_epoch=3", f"hydra.run.dir={tmp_path}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(Exception, match="Could not override 'trainer.max_epoch'"):
            run_entry(_script("train").main)
    finally:
        GlobalHydra.instance().clear()
    assert os.environ["HYDRA_FULL_ERROR"] == "1"  # the user's setting is restored


def test_a_bug_keeps_its_traceback(monkeypatch, capsys) -> None:
    def buggy() -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop:
        run_entry(buggy)
    assert stop.value.code == 1 and "Traceback" in capsys.readouterr().err and user_message(ZeroDivisionError()) is None
