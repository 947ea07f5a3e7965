"""Tests of the prior cache (atomic, resumable, hashed), make_priors() and the multirun table."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
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
    assert report["images"] == 12 and 0 <= report["miou_majority"] <= 1  # fractions in report.json
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


def test_make_priors_writes_panel_and_does_not_rescore(make_cfg: Callable, tmp_path: Path, monkeypatch) -> None:
    import cv2

    import usgs.run.priors as run_priors

    cfg = make_cfg(["prior=kmeans", "data.num_train=6", "data.image_size=32", "prior.k=7", "progress=false",
                    "panel_images=3"], config_name="make_priors")
    seen, compute = [], run_priors.compute_prior
    monkeypatch.setattr(run_priors, "compute_prior",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or compute(*a, **k))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        report = make_priors(cfg)
        # the prior ran with cfg.threads (the benchmark's setting); the caller's count is given back
        assert seen == [int(cfg.threads)] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    folder = find_prior_dir(cfg.paths.priors_dir, "shapes", "train", "kmeans")
    panel = cv2.imread(str(folder / "panel.png"))
    assert (tmp_path / "panel.png").is_file() and (folder / "report.md").is_file()
    assert panel.shape[0] > 3 * 192 and panel.shape[1] > 3 * 192  # 3 rows x (image | prior | GT), >= 192 px
    # same cache again: the scores come back from report.json, nothing is re-scored
    monkeypatch.setattr(run_priors, "score_prior_dir", lambda *a, **k: pytest.fail("re-scored an unchanged cache"))
    assert make_priors(cfg) == report


def test_make_priors_none_lists_the_priors(make_cfg: Callable) -> None:
    with pytest.raises(ValueError, match="kmeans_seed"):
        make_priors(make_cfg(["prior=none"], config_name="make_priors"))


def test_multirun_table_gathers_every_job_and_groups_seeds(tmp_path: Path, capsys) -> None:
    jobs = {"0": ("prior.k=20 seed=1", 0.10), "1": ("prior.k=20 seed=2", 0.20), "2": ("prior.k=40 seed=1", 0.30)}
    for job, (overrides, miou) in jobs.items():
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / "report.json").write_text(json.dumps({"prior": "kmeans", "ms": 2.5, "miou_majority": miou}))
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides.split()))
    MultirunTable().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    lines = (tmp_path / "multirun_report.md").read_text().splitlines()
    assert lines[2] == "| job | overrides | prior | ms | miou_majority (%) |"  # fractions shown in percent
    assert lines[4:7] == [
        "| 0 | prior.k=20 seed=1 | kmeans | 2.50 | 10.0 |",
        "| 1 | prior.k=20 seed=2 | kmeans | 2.50 | 20.0 |",
        "| 2 | prior.k=40 seed=1 | kmeans | 2.50 | 30.0 |",
    ]
    grouped = lines[lines.index("| overrides | seeds | ms | miou_majority (%) |"):]
    # runs differing only in seed: mean ± population std (ddof 0) of 10 and 20 = 15.0 ± 5.0
    assert grouped[2:4] == ["| prior.k=20 | 2 | 2.5 ± 0.0 | 15.0 ± 5.0 |", "| prior.k=40 | 1 | 2.5 ± 0.0 | 30.0 ± 0.0 |"]
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


def test_missing_prior_is_computed_unless_prior_auto_false(make_cfg: Callable, tmp_path: Path, caplog) -> None:
    from usgs.run.prior_auto import ensure_priors

    overrides = ["experiment=twins", "data.num_train=6", "data.image_size=32", "model.num_predictions=5",
                 "prior_overrides=['prior.k=5']"]  # quoted: Hydra's list syntax
    with pytest.raises(FileNotFoundError, match=r"create it with: python make_priors.py prior=kmeans data=shapes"):
        ensure_priors(make_cfg([*overrides, "prior_auto=false"]))
    with caplog.at_level("INFO"):
        (folder,) = ensure_priors(make_cfg(overrides))
    assert "python make_priors.py prior=kmeans split=train prior.k=5 data=shapes" in caplog.text
    assert folder == find_prior_dir(tmp_path / "priors", "shapes", "train", "kmeans")
    assert json.loads((folder / "report.json").read_text())["k"] == 5
    assert ensure_priors(make_cfg([*overrides, "prior_auto=false"])) == [folder]  # found, not recomputed


def test_val_prior_reuses_the_train_fit(make_cfg: Callable) -> None:
    # One global stage on plain RGB / 255 without morphology: a val pixel's prior is then the
    # nearest TRAIN global centre of its colour (the seed's kNNRelabeling.py: fit on train,
    # predict on test), which the test computes with numpy.
    overrides = [
        "prior=kmeans",
        "data.num_train=6",
        "data.num_val=3",
        "data.image_size=16",
        "prior.k=5",
        "prior.stages=1",
        "prior.colour_space=rgb",
        "prior.xy_weight=0",
        "prior.samples_per_image=64",
        "prior.morphology=null",
        "progress=false",
    ]
    report = make_priors(make_cfg([*overrides, "split=val"], config_name="make_priors"))
    cfg = make_cfg(overrides, config_name="make_priors")
    train_dir = find_prior_dir(cfg.paths.priors_dir, "shapes", "train", "kmeans")  # made first
    val_dir = find_prior_dir(cfg.paths.priors_dir, "shapes", "val", "kmeans")
    assert val_dir.name == report["folder"]
    with np.load(train_dir / ".fit.npz") as fit:
        centres = fit["global_centers"].astype(np.float64)
    from hydra.utils import instantiate

    val = instantiate(cfg.data, prior=None).dataset("val", transform=None)
    maps = _pngs(val_dir)
    for i, name in enumerate(val.ids):
        rgb = val.load(i)["image"].reshape(-1, 1, 3) / 255.0
        d = ((rgb - centres[None]) ** 2).sum(-1)
        nearest, gap = d.argmin(1), np.diff(np.sort(d, 1)[:, :2], axis=1)[:, 0]
        clear = gap > 1e-5  # float32 assignment may break near-ties the other way
        assert clear.mean() > 0.9
        assert np.array_equal(maps[f"{name}.png"].ravel()[clear], nearest[clear])
    # fit_split=null fits val on its own images: another cache folder, other centres.
    own = make_priors(make_cfg([*overrides, "split=val", "prior.fit_split=null"], config_name="make_priors"))
    own_dir = val_dir.parent / own["folder"]
    assert own_dir != val_dir
    with np.load(own_dir / ".fit.npz") as fit:
        assert not np.allclose(fit["global_centers"], centres)


def test_kmeans_seed_config_fits_with_ten_restarts(make_cfg: Callable) -> None:
    from sklearn.cluster import KMeans

    prior = _build_prior(make_cfg(["prior=kmeans_seed", "seed=3"], config_name="make_priors"))[2]
    rng = np.random.default_rng(0)
    states = [{"centers": rng.random((5, 3), dtype=np.float32) * 255} for _ in range(20)]
    prior.fit(states)
    points = np.concatenate([s["centers"] for s in states]).astype(np.float64)
    # the seed's KMeans(n_clusters=40) under scikit-learn < 1.4: n_init=10
    reference = KMeans(n_clusters=40, n_init=10, random_state=3).fit(points)
    np.testing.assert_allclose(prior.global_centers, reference.cluster_centers_)


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
    # 5 images per root: 3 train / 1 val / 1 test (the seeded 60/20/20 split)
    assert reports["a"]["folder"] != reports["b"]["folder"] and reports["b"]["images"] == 3
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
    assert json.loads((folder / MANIFEST).read_text())["counts"]["computed_this_run"] == 3
    (folder / MANIFEST).write_text((folder / MANIFEST).read_text().replace('"computed_this_run": 3', '"x": 0'))
    assert run(roots["b"])["folder"] == folder.name
    assert json.loads((folder / MANIFEST).read_text())["counts"]["computed_this_run"] == 3  # not reused
    assert read(roots["b"]).shape == (16, 12)


def test_scoring_skips_only_a_split_without_ground_truth(make_cfg: Callable, monkeypatch, caplog) -> None:
    import usgs.run.priors as run_priors
    from usgs.priors.report import MissingGroundTruthError

    cfg = make_cfg(["prior=kmeans", "data.num_train=6", "data.image_size=16", "prior.k=3", "progress=false"],
                   config_name="make_priors")

    def no_truth(*args: object, **kwargs: object) -> dict:
        raise MissingGroundTruthError("no 'mask' ground truth")

    monkeypatch.setattr(run_priors, "score_prior_dir", no_truth)
    assert "miou_majority" not in make_priors(cfg) and "not scored" in caplog.text

    def bug(*args: object, **kwargs: object) -> dict:
        return {}["typo"]

    monkeypatch.setattr(run_priors, "score_prior_dir", bug)
    for report in Path(cfg.paths.priors_dir).rglob("report.json"):  # else the scores are read back
        report.unlink()
    with pytest.raises(KeyError, match="typo"):  # any other KeyError is a bug, never swallowed
        make_priors(cfg)
