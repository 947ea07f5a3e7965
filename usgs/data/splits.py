"""Train / val / test partitions: seeded hold-outs and which on-disk split each split reads.

Every dataset of the suite has three disjoint splits (docs/data.md, "Splits"): train trains, val alone
chooses checkpoints and hyperparameters, test is only reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def holdout_split(
    ids: Sequence[str], split: str, val_fraction: float, seed: int, test_fraction: float = 0.0
) -> list[str]:
    """The ``split`` part of a seeded partition of ``ids`` into disjoint train / val / test.

    A permutation drawn from ``seed`` gives its first ``test_fraction`` to test, the next
    ``val_fraction`` to val and the rest to train, so the test ids do not depend on
    ``val_fraction``. ``test_fraction=0`` carves only val out of ``ids`` (datasets whose official
    held-out split serves as test); asking for ``test`` then is an error. Ids come back sorted.
    """
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1:
        raise ValueError(
            f"need 0 < val_fraction < 1 and 0 <= test_fraction < 1, got {val_fraction}, {test_fraction}"
        )
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    num_val = max(1, round(val_fraction * len(ids)))
    num_test = max(1, round(test_fraction * len(ids))) if test_fraction > 0 else 0
    if num_test + num_val >= len(ids):
        raise ValueError(
            f"{len(ids)} sample(s) cannot be split into non-empty train and val (and test) with "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    if split == "test" and num_test == 0:
        raise ValueError("test_fraction=0: this split has no test part (the official held-out split is test)")
    order = np.random.default_rng(seed).permutation(len(ids))
    bounds = {
        "test": (0, num_test),
        "val": (num_test, num_test + num_val),
        "train": (num_test + num_val, None),
    }
    start, stop = bounds[split]
    return [ids[i] for i in sorted(order[start:stop])]


def split_sources(split_dirs: Mapping[str, str], what: str) -> dict[str, tuple[str, bool]]:
    """Per split: (its on-disk split, whether val is carved out of it) from ``split_dirs``.

    ``split_dirs`` maps ``train`` and ``test`` (and optionally ``val``) to the dataset's own split
    folders or lists. Without ``val``, val is carved out of ``train``'s source (seeded; see
    :func:`holdout_split` with ``test_fraction=0``) and train keeps the rest.
    """
    missing = [s for s in ("train", "test") if s not in split_dirs]
    unknown = sorted(set(split_dirs) - set(SPLITS))
    if missing or unknown:
        raise ValueError(
            f"{what}: split_dirs {dict(split_dirs)} must name train and test (val optional: carved "
            f"out of train when absent); missing {missing}, unknown {unknown}"
        )
    if "val" in split_dirs:
        return {s: (split_dirs[s], False) for s in SPLITS}
    train = split_dirs["train"]
    return {"train": (train, True), "val": (train, True), "test": (split_dirs["test"], False)}


def overlapping_ids(ids_by_split: dict[str, Sequence[str]]) -> dict[tuple[str, str], list[str]]:
    """Ids shared by two splits, per pair of splits (empty when the splits are disjoint)."""
    names = list(ids_by_split)
    shared = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = sorted(set(ids_by_split[a]) & set(ids_by_split[b]))
            if common:
                shared[(a, b)] = common
    return shared
