"""PSPNet / ClusterNet assembly, its LightningModule and its experiment configs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from usgs.methods.clusternet import ClusterNet
from usgs.nets.pspnet import PSPNet, PyramidPooling
from usgs.nets.spectral import SpectralClustering
from usgs.run.train import train

# ResNet-18 and few clusters: the thesis's ResNet-50 / 40 clusters are too slow for 2 CPU cores.
SMALL = ["model.net.backbone=resnet18", "model.net.spectral.num_clusters=8"]
FAST_RUN = ["trainer.fast_dev_run=true", "data.batch_size=2", "data.eval_batch_size=2"]


def test_pyramid_pooling_channels_and_identity_path() -> None:
    ppm = PyramidPooling(40, bins=(2, 3, 6, 8)).eval()
    assert ppm.channels == 10 and ppm.out_channels == 80  # C / len(bins) per bin (PSPNet)
    x = torch.randn(2, 40, 9, 11)
    out = ppm(x)
    assert out.shape == (2, 80, 9, 11)
    assert torch.equal(out[:, :40], x)  # the input is concatenated unchanged
    # A constant map pools to the same constant at every bin, so every pooled stage is constant.
    const = ppm(torch.ones(1, 40, 9, 11))[:, 40:]
    torch.testing.assert_close(const, const[:, :, :1, :1].expand_as(const))


def test_pspnet_outputs_train_and_eval() -> None:
    net = PSPNet(5, backbone="resnet18", spectral=SpectralClustering(num_clusters=6))
    x = torch.randn(2, 3, 40, 40)
    out = net.train()(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 5, 40, 40)
    assert set(net.eval()(x)) == {"out"}  # the auxiliary head is for training only
    # PPM on the 6 cluster maps: 6 + 4 bins x (6 // 4 = 1) channels.
    assert isinstance(net.cluster, nn.Sequential) and net.ppm.out_channels == 10


def test_gradients_reach_backbone_through_spectral_layer() -> None:
    # No auxiliary head: the only way to the backbone is through the cluster means.
    net = PSPNet(4, backbone="resnet18", aux=False, spectral=SpectralClustering(num_clusters=6))
    image = torch.randn(2, 3, 40, 40)
    mask = torch.randint(0, 4, (2, 40, 40))
    F.cross_entropy(net.train()(image)["out"], mask).backward()
    for name, param in net.backbone.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


class _FixedNet(nn.Module):
    """Returns channels 0..2 of the input as main logits and 3..5 as auxiliary logits."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(1, 1, 1)
        self.head = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x[:, :3], "aux": x[:, 3:]}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")
def test_loss_is_main_plus_weighted_aux_with_ignore() -> None:
    image = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    mask[0, 0] = 255
    loss = ClusterNet(cast(PSPNet, _FixedNet()), 3, aux_weight=0.4).training_step(
        {"image": image, "mask": mask}, 0
    )
    keep = mask != 255

    # Hand-computed CE over the non-ignored pixels, main + 0.4 x aux.
    def ce(logits: torch.Tensor) -> torch.Tensor:
        logp = logits.log_softmax(1).permute(0, 2, 3, 1)[keep]
        return -logp.gather(1, mask[keep].unsqueeze(1)).mean()

    expected = ce(image[:, :3]) + 0.4 * ce(image[:, 3:])
    torch.testing.assert_close(loss, expected)
    assert math.isfinite(float(loss))


def test_param_groups_backbone_at_a_tenth() -> None:
    module = ClusterNet(PSPNet(3, backbone="resnet18", spectral=SpectralClustering(4)), 3)
    groups = module.param_groups()
    assert groups[0]["lr_scale"] == 0.1 and "lr_scale" not in groups[1]
    backbone = {id(p) for p in module.net.backbone.parameters()}
    assert {id(p) for p in groups[0]["params"]} == backbone
    rest = {id(p) for p in groups[1]["params"]}
    assert not rest & backbone
    assert rest | backbone == {id(p) for p in module.parameters()}
    assert module.net.cluster is not None
    assert {id(p) for p in module.net.cluster.parameters()} <= rest  # new modules at 10x


def test_thesis_head_and_optimiser_leave_out_the_cluster_batchnorms() -> None:
    net = PSPNet(3, backbone="resnet18", head_channels=0, spectral=SpectralClustering(4))
    # PPM on 4 maps: 4 + 4 bins x 1 channel; the thesis's classifier is one 1x1 conv on it.
    assert len(net.head) == 1 and isinstance(net.head[0], nn.Conv2d)
    assert (net.head[0].in_channels, net.head[0].kernel_size) == (8, (1, 1))
    module = ClusterNet(net, 3, train_cluster_bn=False)
    grouped = [id(p) for g in module.param_groups() for p in g["params"]]
    assert net.cluster is not None
    cluster = {id(p) for p in net.cluster.parameters()}
    assert len(cluster) == 4  # two BatchNorms x (weight, bias)
    assert not cluster & set(grouped) and len(grouped) == len(set(grouped))
    assert set(grouped) | cluster == {id(p) for p in module.parameters()}


def test_thesis_model_config_runs_with_its_values(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg(["experiment=clusternet", "model=clusternet_thesis"])
    spectral = cfg.model.net.spectral
    assert spectral.affinity.scale == pytest.approx(math.log(2))  # exp(d) < 2
    assert (spectral.num_eigenvectors, spectral.rms_distance) == (2, False)
    assert (spectral.cluster_items, spectral.empty) == ("first", "first_nonempty")
    assert (cfg.model.net.head_channels, cfg.model.train_cluster_bn, cfg.model.poly_power) == (0, False, 0.0)
    # constant 1e-2 for the new layers and 1e-3 for the backbone
    assert cfg.model.optimizer.lr * cfg.model.backbone_lr_scale == pytest.approx(1e-3)
    assert cfg.model.optimizer.lr == pytest.approx(1e-2)
    metrics = _run(
        make_cfg, ["experiment=clusternet", "model=clusternet_thesis", "data=shapes", *SMALL, *FAST_RUN]
    )
    assert 0.0 <= metrics["test/miou"] <= 1.0


def _run(make_cfg: Callable[..., DictConfig], overrides: list[str]) -> dict[str, float]:
    cfg = make_cfg(overrides)
    train(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    return metrics


def test_experiment_clusternet_runs_and_its_spectral_layer_gives_cluster_means(
    make_cfg: Callable[..., DictConfig],
) -> None:
    """The experiment's own network on a real batch: the spectral layer's output is, per cluster of
    layer4 channels, the mean of those channels; the channels fall into several clusters."""
    metrics = _run(make_cfg, ["experiment=clusternet", "data=shapes", *SMALL, *FAST_RUN])
    assert metrics["test/miou"] is not None and math.isfinite(metrics["train/loss"])
    cfg = make_cfg(["experiment=clusternet", "data=shapes", *SMALL, "data.batch_size=2"])
    module = instantiate(cfg.model).eval()
    spectral = next(m for m in module.modules() if isinstance(m, SpectralClustering))
    seen: dict[str, torch.Tensor] = {}
    spectral.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], y=out))
    batch = next(iter(instantiate(cfg.data).train_dataloader()))
    with torch.no_grad():
        module.predict(batch["image"])
    x, y = seen["x"], seen["y"]
    labels = spectral.assign(x)
    assert y.shape == (x.shape[0], 8, *x.shape[2:]) and labels.shape == x.shape[:2]
    for b in range(x.shape[0]):
        used = labels[b].unique()
        assert len(used) >= 2, "every channel in one cluster"
        for k in used:
            torch.testing.assert_close(y[b, k], x[b, labels[b] == k].mean(0), rtol=1e-4, atol=1e-5)


def test_stanford_experiments_differ_only_by_the_spectral_layer(
    make_cfg: Callable[..., DictConfig],
) -> None:
    cluster = make_cfg(["experiment=clusternet_stanford"])
    plain = make_cfg(["experiment=pspnet_stanford"])
    assert cluster.model.net.spectral.num_clusters == 40 and plain.model.net.spectral is None
    # each lr chosen on val by its own sweep (bench/lr_sweep.py): the same 0.01 from the ImageNet start
    assert (cluster.model.optimizer.lr, plain.model.optimizer.lr) == (0.01, 0.01)
    assert cluster.model.net.weights == "efficientnet_lite0" and cluster.model.net.backbone == "efficientnet_lite0"
    cluster.model.net.spectral = None
    cluster.model.optimizer.lr = plain.model.optimizer.lr
    cluster.tags = plain.tags
    assert cluster == plain  # same budget, data, rest of the optimiser and seed


def _cityscapes_overrides(shared_data: Path) -> list[str]:
    root = shared_data / "mmseg_real_samples" / "pseudo_cityscapes_dataset"
    if not (root / "leftImg8bit").is_dir():
        pytest.skip(f"Cityscapes sample frame absent under {root}")
    return [
        "experiment=clusternet",
        f"data.root={root}",
        # The sample ships one val frame only: every split reads it (splits overlap: a smoke test).
        "data.split_dirs.train=val",
        "+data.split_dirs.val=val",
        "data.train_transform.crop_size=96",
        "data.persistent_workers=false",
        "data.batch_size=1",
        *SMALL,
    ]


def test_clusternet_on_real_cityscapes_frame(make_cfg: Callable[..., DictConfig], shared_data: Path) -> None:
    overrides = [*_cityscapes_overrides(shared_data), "trainer.fast_dev_run=true"]
    metrics = _run(make_cfg, overrides)
    assert 0.0 <= metrics["test/miou"] <= 1.0
    assert len([k for k in metrics if k.startswith("test/iou/")]) == 19


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")
def test_clusternet_raw_cityscapes_ids(make_cfg: Callable[..., DictConfig], shared_data: Path) -> None:
    # The thesis's 34 raw label ids: one training step on the real frame, no Trainer needed.
    cfg = make_cfg([*_cityscapes_overrides(shared_data), "data.label_mode=raw", "data.num_classes=34"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    valid = batch["mask"][batch["mask"] != 255]
    assert valid.numel() > 0 and int(valid.max()) < 34
    model = instantiate(cfg.model, _convert_="all")
    assert model.predict(batch["image"]).shape[1] == 34
    loss = model.training_step(batch, 0)
    loss.backward()
    assert math.isfinite(float(loss))
