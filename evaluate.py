"""Evaluate a trained checkpoint: `python evaluate.py task=kmeans ckpt_path=<run>/checkpoints/last.ckpt`."""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import usgs.run.names  # noqa: E402,F401 - the resolver naming run directories
from usgs.run.entry import run_entry, user_errors  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@user_errors
def main(cfg: DictConfig):  # noqa: ANN201 - Optuna reads the returned metric
    from usgs.run.evaluate import evaluate

    return evaluate(cfg)


if __name__ == "__main__":
    run_entry(main)  # a user error: one line and exit status 2 (traceback with HYDRA_FULL_ERROR=1)
