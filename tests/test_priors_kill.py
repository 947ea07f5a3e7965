"""make_priors.py killed with SIGKILL in each stage (per-image, fit, finalize): the rerun resumes, its
cache equals an uninterrupted run's byte for byte, and no worker process outlives the killed run."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from usgs.priors.base import State
from usgs.priors.kmeans import SeedKMeansPrior

ROOT = Path(__file__).resolve().parents[1]
KILL_AT = "USGS_TEST_KILL_AT"  # stage in which the run kills itself: local, fit or finalize
MARKS = "USGS_TEST_MARKS"  # folder where every process that computes images leaves its pid


class KillingPrior(SeedKMeansPrior):
    """kmeans_seed that SIGKILLs the make_priors process in the stage named by $USGS_TEST_KILL_AT.

    The trigger is an environment variable, not a config key: the config is part of the cache
    identity, and the rerun must find the killed run's folder.
    """

    finalized = 0

    def local(self, images: Sequence[np.ndarray], indices: Sequence[int]) -> list[State]:
        if os.environ.get(MARKS):
            Path(os.environ[MARKS], str(os.getpid())).touch()
        if os.environ.get(KILL_AT) == "local" and 6 in indices:
            deadline = time.monotonic() + 60
            while len(list(Path(os.environ[MARKS]).iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)  # until both workers have computed images
            in_worker = multiprocessing.parent_process() is not None
            os.kill(os.getppid() if in_worker else os.getpid(), signal.SIGKILL)
        return super().local(images, indices)

    def fit(self, states: Sequence[State], load_image: object = None) -> None:
        if os.environ.get(KILL_AT) == "fit":
            os.kill(os.getpid(), signal.SIGKILL)
        super().fit(states, load_image)

    def finalize_raw(self, image: np.ndarray, state: State) -> np.ndarray:
        KillingPrior.finalized += 1
        if os.environ.get(KILL_AT) == "finalize" and KillingPrior.finalized == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().finalize_raw(image, state)


ARGS = [
    "prior=kmeans_seed",
    f"prior._target_={__name__}.KillingPrior",
    "prior.k=4",
    "prior.local_k=2",
    "prior.attempts=1",
    "prior.batch_size=2",
    "data=shapes",
    "data.num_train=12",
    "data.image_size=32",
    "progress=false",
]


def _make_priors(priors: Path, workers: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    """make_priors.py in a real process (the workers' count is not part of the cache identity)."""
    args = [*ARGS, f"prior.workers={workers}", f"paths.priors_dir={priors}", f"hydra.run.dir={priors}/run"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, str(ROOT / "make_priors.py"), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _cache(priors: Path) -> dict[str, bytes]:
    """Every file of the one cache folder (the manifest without its timings and counts of this run)."""
    (folder,) = (priors / "shapes" / "train").iterdir()
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    for key in ("created", "seconds", "ms_per_image", "git_sha"):
        manifest.pop(key)
    manifest["counts"].pop("computed_this_run")
    files.pop("report.json"), files.pop("report.md")
    return {**files, "manifest.json": json.dumps(manifest, sort_keys=True).encode()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended (its new parent may not have reaped it yet)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from tests.conftest import compose_config
    from usgs.run.priors import make_priors

    run_dir = tmp_path_factory.mktemp("uninterrupted")  # in this process: one interpreter start less
    make_priors(compose_config("make_priors", [*ARGS, "prior.workers=1"], run_dir))
    return _cache(run_dir / "priors")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["local", "fit", "finalize"])  # killed in fit: the fit is redone
def test_sigkill_in_any_stage_resumes_to_the_same_cache(
    reference: dict[str, bytes], tmp_path: Path, stage: str
) -> None:
    marks = tmp_path / "pids"
    marks.mkdir()
    killed = _make_priors(tmp_path, 2 if stage == "local" else 1, {KILL_AT: stage, MARKS: str(marks)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (folder,) = (tmp_path / "shapes" / "train").iterdir()
    assert not (folder / "manifest.json").exists()
    assert (folder / ".fit.npz").exists() == (stage == "finalize")
    workers_pids = [int(p.name) for p in marks.iterdir()]
    if stage == "local":
        assert len(set(workers_pids)) == 2  # two worker processes computed images ...
        deadline = time.monotonic() + 10
        while any(map(_alive, workers_pids)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, workers_pids))  # ... and died with the killed run
    # the rerun in this process (one interpreter start less): what it finds on disk is all it resumes from
    from tests.conftest import compose_config
    from usgs.run.priors import make_priors

    cfg = compose_config("make_priors", [*ARGS, "prior.workers=1"], tmp_path / "rerun")
    with open_dict(cfg):
        cfg.paths.priors_dir = str(tmp_path)  # the killed run's cache
    make_priors(cfg)
    assert _cache(tmp_path) == reference
