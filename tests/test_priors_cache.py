"""Tests of the prior cache (atomic, resumable, hashed), make_priors() and the multirun table."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from usgs.data.prior_store import MANIFEST, find_prior_dir
from usgs.priors.base import State
from usgs.priors.cache import ConfigMismatchError, compute_prior
from usgs.priors.kmeans import SeedKMeansPrior, TorchKMeansPrior
from usgs.run.priors import _build_prior, make_priors
from usgs.run.sweep import MultirunTable


class ToyDataset:
    """10 small two-colour images with ids in a sub-folder; ``broken`` index fails to load."""

    def __init__(self, broken: int | None = None) -> None:
        self.ids = [f"sub/img{i}" for i in range(10)]
        self.broken = broken
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 255, (12, 16, 3), dtype=np.uint8) for _ in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> dict[str, np.ndarray]:
        if index == self.broken:
            raise OSError("truncated JPEG")
        return {"image": self.images[index]}

    def describe(self, index: int) -> str:
        return f"file /toy/{self.ids[index]}.jpg"


class KilledPrior(TorchKMeansPrior):
    """Dies (like a killed process) when it reaches image ``die_at``; counts computed images."""

    def __init__(self, die_at: int | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.die_at, self.seen = die_at, 0

    def local(self, images: Sequence[np.ndarray], indices: Sequence[int]) -> list[State]:
        if self.die_at is not None and self.die_at in indices:
            raise KeyboardInterrupt
        self.seen += len(indices)
        return super().local(images, indices)


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {
        str(p.relative_to(folder)): cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        for p in sorted(folder.rglob("*.png"))
    }


def test_killed_run_resumes_and_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    kw: dict[str, object] = {"k": 3, "local_k": 2, "samples_per_image": 32, "batch_size": 3}
    config = {"prior": "toy"}
    with pytest.raises(KeyboardInterrupt):
        compute_prior(KilledPrior(die_at=7, **kw), ToyDataset(), tmp_path / "a", config, progress=False)
    assert not (tmp_path / "a" / MANIFEST).exists()  # unfinished: no manifest
    assert len(list((tmp_path / "a" / ".states").rglob("*.npz"))) == 6  # batches [0..2], [3..5] done
    resumed = KilledPrior(**kw)
    manifest = compute_prior(resumed, ToyDataset(), tmp_path / "a", config, progress=False)
    assert resumed.seen == 4  # only batches [6..8] and [9] were recomputed
    assert manifest["counts"]["images"] == 10 and manifest["counts"]["computed_this_run"] == 4
    assert not (tmp_path / "a" / ".states").exists()
    fresh = compute_prior(KilledPrior(**kw), ToyDataset(), tmp_path / "b", config, progress=False)
    assert fresh["counts"]["label_pixels"] == manifest["counts"]["label_pixels"]
    a, b = _pngs(tmp_path / "a"), _pngs(tmp_path / "b")
    assert list(a) == [f"sub/img{i}.png" for i in range(10)]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # a finished folder is returned as is, nothing recomputed
    again = KilledPrior(**kw)
    assert (
        compute_prior(again, ToyDataset(), tmp_path / "a", config, progress=False) == manifest
        and again.seen == 0
    )


def test_other_config_is_never_reused_silently(tmp_path: Path) -> None:
    prior = TorchKMeansPrior(k=3, local_k=2, samples_per_image=32)
    compute_prior(prior, ToyDataset(), tmp_path, {"k": 3}, progress=False)
    with pytest.raises(ConfigMismatchError, match="different prior config"):
        compute_prior(prior, ToyDataset(), tmp_path, {"k": 4}, progress=False)


def test_unreadable_image_names_file_and_reason(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"image 4 \(file /toy/sub/img4.jpg\): OSError: truncated JPEG"):
        compute_prior(SeedKMeansPrior(k=3, local_k=2), ToyDataset(broken=4), tmp_path, {}, progress=False)


def test_parallel_workers_give_the_same_cache(tmp_path: Path) -> None:
    kw = {"k": 4, "local_k": 3, "attempts": 2, "batch_size": 2}
    compute_prior(SeedKMeansPrior(**kw), ToyDataset(), tmp_path / "one", {}, workers=1, progress=False)
    compute_prior(SeedKMeansPrior(**kw), ToyDataset(), tmp_path / "two", {}, workers=2, progress=False)
    one, two = _pngs(tmp_path / "one"), _pngs(tmp_path / "two")
    assert list(one) == list(two) and all(np.array_equal(one[k], two[k]) for k in one)


def test_make_priors_on_shapes_then_data_reads_it(make_cfg: Callable, tmp_path: Path, capsys) -> None:
    overrides = ["prior=kmeans", "data.num_train=12", "data.image_size=32", "prior.k=8", "progress=false"]
    cfg = make_cfg(overrides, config_name="make_priors")
    report = make_priors(cfg)
    assert "| kmeans | shapes | train |" in capsys.readouterr().out
    assert report["images"] == 12 and 0 <= report["miou_majority"] <= 100
    folder = find_prior_dir(cfg.paths.priors_dir, "shapes", "train", "kmeans")
    assert folder.name == report["folder"] and json.loads((tmp_path / "report.json").read_text()) == report
    # another config of the same prior goes to another folder; data.prior=kmeans is then ambiguous
    make_priors(make_cfg([*overrides[:-2], "prior.k=6", "progress=false"], config_name="make_priors"))
    with pytest.raises(ValueError, match="several cached configurations"):
        find_prior_dir(cfg.paths.priors_dir, "shapes", "train", "kmeans")
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, prior=folder.name, prior_root=cfg.paths.priors_dir)
    sample = dm.dataset("train", transform=None)[0]
    assert sample["prior"].shape == (32, 32) and int(sample["prior"].max()) < 8


def test_make_priors_none_lists_the_priors(make_cfg: Callable) -> None:
    with pytest.raises(ValueError, match="kmeans_seed"):
        make_priors(make_cfg(["prior=none"], config_name="make_priors"))


def test_multirun_table_gathers_every_job(tmp_path: Path, capsys) -> None:
    for job, k in (("0", 20), ("1", 40)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / "report.json").write_text(
            json.dumps({"prior": "kmeans", "k": k, "miou_majority": k / 2})
        )
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- prior.k={k}\n")
    MultirunTable().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    lines = (tmp_path / "multirun_report.md").read_text().splitlines()
    assert lines[2] == "| job | overrides | prior | k | miou_majority |"
    assert lines[4:6] == [
        "| 0 | prior.k=20 | kmeans | 20 | 10.00 |",
        "| 1 | prior.k=40 | kmeans | 40 | 20.00 |",
    ]
    assert "prior.k=40" in capsys.readouterr().out


def test_saliency_sup_without_checkpoint_says_how_to_train(make_cfg: Callable) -> None:
    with pytest.raises(ValueError, match="experiment=saliency_weizmann"):
        make_priors(make_cfg(["prior=saliency_sup"], config_name="make_priors"))


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("kmeans", TorchKMeansPrior),
        ("kmeans_seed", SeedKMeansPrior),
        ("saliency_unsup", "UnsupervisedSaliencyPrior"),
    ],
)
def test_every_prior_config_builds(make_cfg: Callable, name: str, cls: type | str) -> None:
    cfg = make_cfg([f"prior={name}", "seed=5"], config_name="make_priors")
    built_name, workers, prior = _build_prior(cfg)
    assert built_name == name and workers >= 1 and prior.seed == 5
    assert type(prior).__name__ == (cls if isinstance(cls, str) else cls.__name__)
    if name.startswith("kmeans"):
        assert prior.num_labels == 40 and repr(prior.postprocess) == (
            "Morphology(kernel=5, shape='ellipse', min_area=0.0, fill=255)"
        )


def _folder_root(root: Path, shape: tuple[int, int]) -> Path:
    """5 images ``0..4.png`` of ``shape`` with two-class masks: the same file names in every root."""
    rng = np.random.default_rng(shape[0])
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k in range(5):
        cv2.imwrite(str(root / "images" / f"{k}.png"), rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "masks" / f"{k}.png"), (rng.random(shape) > 0.5).astype(np.uint8))
    return root


def test_two_roots_with_the_same_names_never_share_a_cache(make_cfg: Callable, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    roots = {"a": _folder_root(tmp_path / "a", (12, 16)), "b": _folder_root(tmp_path / "b", (16, 12))}
    fast = ["prior=kmeans", "data=folder", "prior.k=3", "prior.local_k=2", "prior.samples_per_image=32"]

    def run(root: Path) -> dict:
        return make_priors(make_cfg([*fast, f"data.root={root}", "progress=false"], config_name="make_priors"))

    reports = {name: run(root) for name, root in roots.items()}  # b used to reuse a's cache and crash
    assert reports["a"]["folder"] != reports["b"]["folder"] and reports["b"]["images"] == 4
    cfg = make_cfg([*fast, f"data.root={roots['b']}"], config_name="make_priors")

    def read(root: Path) -> np.ndarray:
        dm = instantiate(cfg.data, root=str(root), prior="kmeans", prior_root=cfg.paths.priors_dir)
        return dm.dataset("train", transform=None)[0]["prior"].numpy()

    assert read(roots["a"]).shape == (12, 16) and read(roots["b"]).shape == (16, 12)
    # a file of b changes: the reader refuses the cache, make_priors recomputes it in the same folder
    cv2.imwrite(str(roots["b"] / "images" / "1.png"), np.zeros((16, 12, 3), np.uint8))
    with pytest.raises(ValueError, match=r"computed from other files.*make_priors.py prior=kmeans"):
        read(roots["b"])
    folder = Path(cfg.paths.priors_dir) / "folder" / "train" / reports["b"]["folder"]
    assert json.loads((folder / MANIFEST).read_text())["counts"]["computed_this_run"] == 4
    (folder / MANIFEST).write_text((folder / MANIFEST).read_text().replace('"computed_this_run": 4', '"x": 0'))
    assert run(roots["b"])["folder"] == folder.name
    assert json.loads((folder / MANIFEST).read_text())["counts"]["computed_this_run"] == 4  # not reused
    assert read(roots["b"]).shape == (16, 12)


def test_scoring_skips_only_a_split_without_ground_truth(make_cfg: Callable, monkeypatch, caplog) -> None:
    import usgs.run.priors as run_priors
    from usgs.priors.report import MissingGroundTruthError

    cfg = make_cfg(["prior=kmeans", "data.num_train=6", "data.image_size=16", "prior.k=3", "progress=false"],
                   config_name="make_priors")

    def no_truth(*args: object) -> dict:
        raise MissingGroundTruthError("no 'mask' ground truth")

    monkeypatch.setattr(run_priors, "score_prior_dir", no_truth)
    assert "miou_majority" not in make_priors(cfg) and "not scored" in caplog.text

    def bug(*args: object) -> dict:
        return {}["typo"]

    monkeypatch.setattr(run_priors, "score_prior_dir", bug)
    with pytest.raises(KeyError, match="typo"):  # any other KeyError is a bug, never swallowed
        make_priors(cfg)
