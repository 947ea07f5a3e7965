"""One weight loader for every backbone: each checkpoint layout loads exactly, mismatches are errors."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import torch

from usgs.nets.backbones import resnet
from usgs.nets.deeplab import DeepLabV3
from usgs.nets.vit import vit
from usgs.nets.weights import WeightsMismatchError, load_weights


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def _prefixed(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in module.state_dict().items()}


def test_resnet_layouts_load_exactly(tmp_path: Path) -> None:
    source = resnet("resnet18")
    torchvision_file = {**_prefixed(source, ""), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    moco = {"epoch": 200, "arch": "resnet18", "state_dict": {
        **_prefixed(source, "module.encoder_q."), "module.encoder_q.fc.0.weight": torch.zeros(2048, 512),
        **_prefixed(resnet("resnet18"), "module.encoder_k."), "module.queue": torch.zeros(128, 65536)}}
    lightning_net = DeepLabV3(num_classes=3, backbone="resnet18")
    lightning_net.backbone.load_state_dict(source.state_dict())
    lightning = {"epoch": 3, "state_dict": {**_prefixed(lightning_net, "net."),
                                            **_prefixed(DeepLabV3(3, backbone="resnet18"), "teacher_net.")}}
    for name, blob in {"tv": torchvision_file, "moco": moco, "lightning": lightning}.items():
        path = tmp_path / f"{name}.pth"
        torch.save(blob, path)
        target = resnet("resnet18")
        report = load_weights(target, path)
        assert _same(target, source), name
        assert report.missing == report.unexpected == [] and report.loaded == len(source.state_dict())
    assert load_weights(resnet("resnet18"), tmp_path / "moco.pth").prefix == "module.encoder_q."
    assert load_weights(resnet("resnet18"), tmp_path / "lightning.pth").prefix == "net.backbone."


def test_dino_training_checkpoint_teacher_by_default_student_on_request(tmp_path: Path) -> None:
    teacher, student = vit("vit_small_patch16"), vit("vit_small_patch16")
    head = {"head.mlp.0.weight": torch.zeros(8, 384), "head.last_layer.weight_g": torch.ones(1, 1)}
    blob = {"teacher": {**_prefixed(teacher, "backbone."), **{"" + k: v for k, v in head.items()}},
            "student": {**_prefixed(student, "module.backbone."), **{"module." + k: v for k, v in head.items()}},
            "epoch": 100, "args": argparse.Namespace(arch="vit_small"), "optimizer": {"state": {}}}
    path = tmp_path / "checkpoint.pth"
    torch.save(blob, path)
    target = vit("vit_small_patch16", weights=str(path))
    assert _same(target, teacher) and not _same(target, student)
    load_weights(target, path, checkpoint_key="student")
    assert _same(target, student)


def test_mismatch_is_an_error_listing_keys_unless_not_strict(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = resnet("resnet18").state_dict()
    del state["layer4.1.bn2.bias"]
    state["layer5.weight"] = torch.zeros(3)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError, match="partial.pth") as error:
        resnet("resnet18", weights=str(path))
    for text in ("1 missing", "layer4.1.bn2.bias", "1 unexpected", "layer5.weight", "conv1.weight"):
        assert text in str(error.value)
    with caplog.at_level(logging.WARNING, logger="usgs.nets.weights"):
        target = resnet("resnet18", weights=str(path), weights_strict=False)
    assert "1 missing" in caplog.text and "1 unexpected" in caplog.text
    assert torch.equal(target.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert not torch.equal(target.conv1.weight, state["conv1.weight"])


def test_whole_network_files_need_matching_heads(tmp_path: Path) -> None:
    path = tmp_path / "deeplab.pth"
    source = DeepLabV3(num_classes=3, backbone="resnet18")
    torch.save(source.state_dict(), path)
    with pytest.raises(WeightsMismatchError, match="head.classifier.weight"):
        load_weights(DeepLabV3(num_classes=5, backbone="resnet18"), path)
    target = DeepLabV3(num_classes=5, backbone="resnet18")
    report = load_weights(target, path, strict=False)
    assert len(report.shape_mismatch) == 2 and torch.equal(target.backbone.conv1.weight, source.backbone.conv1.weight)


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_weights(resnet("resnet18"), tmp_path / "missing.pth")
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsMismatchError, match="other.pth.*no key matches"):
        load_weights(resnet("resnet18"), path)
    torch.save({"teacher": {"x": torch.zeros(1)}}, path)
    with pytest.raises(KeyError, match="'student'.*teacher"):
        load_weights(resnet("resnet18"), path, checkpoint_key="student")


def test_files_with_arbitrary_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": resnet("resnet18").state_dict(), "hook": _same}, path)  # a pickled function
    with pytest.raises(ValueError, match="pickled.pth.*weights_only"):
        load_weights(resnet("resnet18"), path)
