"""Reading side of the prior cache written by `make_priors.py`.

Layout: ``<prior_root>/<dataset name>/<split>/<prior>-<config hash>/<sample id>.png`` (uint8 PNG,
255 = ignore; sample ids may contain ``/``, giving sub-folders) plus ``manifest.json``, which the
writer creates last, so a folder without it is an unfinished (resumable) run. The manifest's
``data`` entry (data root + fingerprint of the split's files, see
``SegmentationDataModule.data_identity``) ties a cache to the files it was computed from: the reader
skips caches of other data roots and refuses one whose files changed since.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


def prior_dir_name(prior: str, config_hash: str) -> str:
    """Folder name of one prior configuration: ``<prior>-<config_hash>``.

    The hash (of the prior's resolved config) keeps differently-configured runs of the same prior
    apart; neither part may contain ``-`` or ``/`` so the name splits back unambiguously.
    """
    for what, value in (("prior name", prior), ("config hash", config_hash)):
        if not _NAME.match(value):
            raise ValueError(f"{what} {value!r} must be non-empty and use only letters, digits, '_' and '.'")
    return f"{prior}-{config_hash}"


def manifest_data(folder: Path) -> dict[str, Any] | None:
    """The ``data`` identity stored in a finished cache's manifest (None: hand-written or older cache)."""
    data = json.loads((folder / MANIFEST).read_text()).get("data")
    return data if isinstance(data, dict) else None


def find_prior_dir(
    prior_root: str | Path, dataset: str, split: str, prior: str, data: Mapping[str, Any] | None = None
) -> Path:
    """The finished cache folder of ``prior`` for ``dataset``/``split``.

    ``prior`` is a prior name (``kmeans``) or a full folder name (``kmeans-1a2b3c4d``) to choose one
    configuration among several. ``data`` (root + file fingerprint of the split being read) skips
    caches of another data root and raises ValueError for one computed from other files. Raises
    FileNotFoundError with the command that creates the cache when none exists, and ValueError listing
    the candidates when several configurations match.
    """
    split_dir = Path(prior_root) / dataset / split
    make = f"python make_priors.py prior={prior.split('-')[0]} data={dataset}"
    candidates = sorted(p for p in split_dir.glob(f"{prior}*") if p.is_dir()) if split_dir.is_dir() else []
    matching = [p for p in candidates if p.name == prior or p.name.rsplit("-", 1)[0] == prior]
    finished = [p for p in matching if (p / MANIFEST).is_file()]
    if data is not None:  # caches of another data root belong to another dataset
        other = [p for p in finished if (manifest_data(p) or data).get("root") != data.get("root")]
        matching = [p for p in matching if p not in other]
        finished = [p for p in finished if p not in other]
        make += f" data.root={data.get('root')}" if other else ""
    if not finished:
        if matching:
            names = ", ".join(p.name for p in matching)
            raise FileNotFoundError(
                f"prior cache for prior={prior!r}, data={dataset!r}, split={split!r} is unfinished "
                f"(no {MANIFEST} in {names} under {split_dir}); resume it with: {make}"
            )
        raise FileNotFoundError(
            f"no prior cache for prior={prior!r}, data={dataset!r}, split={split!r}: expected "
            f"{split_dir}/{prior}-<hash>/<id>.png + {MANIFEST}; create it with: {make}"
        )
    if len(finished) > 1:
        names = ", ".join(p.name for p in finished)
        raise ValueError(
            f"several cached configurations of prior={prior!r} in {split_dir}: {names}; "
            f"choose one with data.prior=<folder name> (e.g. data.prior={finished[0].name})"
        )
    stored = manifest_data(finished[0])
    if data is not None and stored is not None and stored.get("sha256") != data.get("sha256"):
        raise ValueError(
            f"prior cache {finished[0]} was computed from other files of {data.get('root')} "
            f"({stored.get('samples')} samples, {stored.get('files')} files then; {data.get('samples')} samples, "
            f"{data.get('files')} files now, or sizes / modification times changed); recompute it with: {make}"
        )
    return finished[0]
