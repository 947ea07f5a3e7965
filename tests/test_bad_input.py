"""Drills of bad input (issue 28; image modes: tests/test_image_modes.py, messy predict folders:
tests/test_predict_folders.py): every user error ends the entry point with one ``error: ...`` line
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

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from usgs.atomic import atomic_write
from usgs.errors import RunDirInUseError, UnreadableFileError
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
    (["model.net.weights=efficientnet_lite0"], "'efficientnet_lite0' are for backbone 'efficientnet_lite0', not"),
    (["+model.net.nonsense=1"], "unexpected keyword argument 'nonsense' [key model.net]"),
    (["+callbacks.oops.save_dir=somewhere"], "callbacks.oops has no _target_"),
    (["model.net._target_=usgs.nets.nope.Net"], "no such _target_ 'usgs.nets.nope.Net'"),
])
def test_values_refused_by_a_constructor_are_one_line_naming_the_key(args, named, tmp_path, monkeypatch,
                                                                      capsys) -> None:
    (tmp_path / "config.yaml").write_text("seed: 1\n")  # an earlier run's records stay as they were
    (tmp_path / "git_sha.txt").write_text("earlier\n")
    status, line = cli("train", [*SMALL, f"hydra.run.dir={tmp_path}", *args], monkeypatch, capsys)
    assert status == 2 and named in line, line
    assert (tmp_path / "config.yaml").read_text() == "seed: 1\n"
    assert (tmp_path / "git_sha.txt").read_text() == "earlier\n"


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


def test_every_experiment_config_passes_the_checkpoint_check(make_cfg) -> None:
    """What train.py stores of each experiment loads back (STEGO's partial ``model.crf`` once did not), and
    a partial outside usgs is still refused."""
    from omegaconf import OmegaConf

    from tests.conftest import EXPERIMENTS
    from tests.test_paper_recipes import RECIPES
    from usgs.nets.weights import WeightsFileError
    from usgs.run.checkpoints import _check_targets

    experiments = [*EXPERIMENTS, *(f"paper/{name}" for name, (config, _) in RECIPES.items() if config == "train")]
    assert "stego_stanford" in experiments and len(experiments) > len(EXPERIMENTS)
    for name in experiments:
        cfg = make_cfg([f"experiment={name}"])
        for key in ("model", "data"):
            _check_targets(OmegaConf.to_container(cfg[key], resolve=False), Path(name), key)
    with pytest.raises(WeightsFileError, match="'os.system'"):
        _check_targets({"crf": {"_target_": "os.system", "_partial_": True}}, Path("x"), "model")


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
