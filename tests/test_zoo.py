"""The weights registry: names resolve to verified files, downloads go through a temporary file and a
checksum (against a server on 127.0.0.1 started here), missing files say where to get and put them."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from usgs.errors import ConfigError
from usgs.nets import zoo
from usgs.nets.backbones import backbone, resnet
from usgs.nets.weights import load_weights

# The names other code (paper recipes) refers to: renaming one is a breaking change.
EXPECTED = {"moco_v2_800ep_r50", "torchvision_resnet50", "torchvision_resnet101", "torchvision_vgg16_bn",
            "deepstem_resnet50", "dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8", "dinov2_vits14",
            "dinov2_vitb14", "dinov2_vits14_reg", "dinov2_vitb14_reg", "efficientnet_lite0", "efficientnet_lite1",
            "efficientnet_lite2"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path / "served"``; yields (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()
    httpd.server_close()


def _weight_file(path: Path) -> str:
    torch.save(resnet("resnet18").state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registry_names_urls_licences() -> None:
    assert set(zoo.REGISTRY) == EXPECTED and zoo.NAMES[-1] == zoo.RANDOM
    for item in zoo.ENTRIES:
        assert item.url.startswith("https://") and item.licence and item.layout and item.source
        if item.checksum:  # publisher's: torchvision / PyPI file names carry the sha256 prefix
            algorithm, digest = item.checksum.split(":")
            assert algorithm in ("sha256", "md5") and len(digest) >= 8
            if "download.pytorch.org" in item.url or item.package:
                assert Path(item.filename).stem.endswith(digest)


def test_download_verifies_and_renames(server: tuple[str, Path], tmp_path: Path) -> None:
    base, folder = server
    digest = _weight_file(folder / "r18.pth")
    item = zoo.WeightsEntry("test_r18", "resnet18", f"{base}/r18.pth", "r18.pth", "MIT", "state dict", "test",
                            f"sha256:{digest[:8]}")
    dest = tmp_path / "cache"
    path = zoo.fetch(item, dest)
    assert path == dest / "r18.pth" and path.read_bytes() == (folder / "r18.pth").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["r18.pth"]  # no temporary file left
    load_weights(resnet("resnet18"), path)  # strict


def test_corrupt_download_is_a_checksum_error_and_leaves_nothing(server: tuple[str, Path], tmp_path: Path) -> None:
    base, folder = server
    digest = _weight_file(folder / "r18.pth")
    data = bytearray((folder / "r18.pth").read_bytes())
    data[len(data) // 2] ^= 0xFF  # corrupted in transit
    (folder / "r18.pth").write_bytes(bytes(data))
    item = zoo.WeightsEntry("test_r18", "resnet18", f"{base}/r18.pth", "r18.pth", "MIT", "state dict", "test",
                            f"sha256:{digest[:8]}")
    dest = tmp_path / "cache"
    with pytest.raises(zoo.ChecksumError, match="does not start with"):
        zoo.fetch(item, dest)
    assert not dest.exists() or not any(dest.iterdir())  # nothing half-written, no temporary file


def test_unchecksummed_file_records_its_digest_then_verifies(server: tuple[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    base, folder = server
    digest = _weight_file(folder / "dino.pth")
    item = replace(zoo.REGISTRY["dino_vits16"], url=f"{base}/dino.pth", filename="dino.pth")
    monkeypatch.setitem(zoo.REGISTRY, "dino_vits16", item)
    monkeypatch.setenv("USGS_WEIGHTS_DIR", str(tmp_path / "cache"))
    path = zoo.fetch(item)
    assert (tmp_path / "cache" / "dino.pth.sha256").read_text().strip() == digest
    assert zoo.resolve("dino_vits16") == path  # verified against the record
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed after the first download
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ChecksumError, match="recorded"):
        zoo.resolve("dino_vits16")


def test_offline_and_missing_files_name_the_url_and_the_exact_path(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USGS_WEIGHTS_DIR", str(tmp_path / "w"))
    item = zoo.REGISTRY["torchvision_resnet50"]
    with pytest.raises(zoo.WeightsUnavailableError) as missing:
        backbone("resnet50", weights="torchvision_resnet50")
    assert item.url in str(missing.value) and str(tmp_path / "w" / "resnet50-0676ba61.pth") in str(missing.value)
    # offline: a refused connection (nothing listens on port 9 of 127.0.0.1) says where to put the file
    with pytest.raises(zoo.WeightsUnavailableError, match=str(tmp_path / "w" / "resnet50-0676ba61.pth")):
        zoo.fetch(item, url="http://127.0.0.1:9/resnet50-0676ba61.pth", timeout=5)
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())
    with pytest.raises(zoo.WeightsUnavailableError, match="folder page"):
        zoo.fetch(zoo.REGISTRY["deepstem_resnet50"])


def test_names_resolve_anywhere_random_is_explicit_unknown_lists_names() -> None:
    path = zoo.resolve("efficientnet_lite0")
    assert path is not None and path.name == "efficientnet-lite0-57934424.pth" and path.is_file()
    assert zoo.resolve("random") is None
    a, b = backbone("resnet18", weights="random"), backbone("resnet18", weights="random")
    assert not torch.equal(a.conv1.weight, b.conv1.weight)  # nothing loaded: fresh random draws
    with pytest.raises(ValueError, match="valid names: .*efficientnet_lite0.*random"):
        backbone("resnet18", weights="efficientnet_lite7")


def test_a_registered_name_for_another_backbone_is_refused_before_any_file_is_read() -> None:
    # the *_stanford experiments default to efficientnet_lite0 weights: overriding only the backbone is refused
    with pytest.raises(ConfigError, match="'efficientnet_lite0' are for backbone 'efficientnet_lite0', not 'resnet18'"):
        backbone("resnet18", weights="efficientnet_lite0")
    with pytest.raises(ConfigError, match="for backbone 'resnet50', not 'efficientnet_lite0'"):
        backbone("efficientnet_lite0", weights="moco_v2_800ep_r50")  # refused though that file is absent here
    assert backbone("efficientnet_lite1", weights="random").channels["layer4"] == 1280


def test_cli_lists_every_name() -> None:
    out = subprocess.run([sys.executable, "-m", "usgs.nets.zoo", "list"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    listed = {line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")}
    assert listed == EXPECTED | {"random"}
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth" in out
    bad = subprocess.run([sys.executable, "-m", "usgs.nets.zoo", "fetch", "nope"], cwd=ROOT, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "valid names" in bad.stderr
