"""The one way the suite writes a file: a temporary file in the same folder, then a rename.

A reader (or a resumed run) sees the old file or the new one, never half of one, whenever the writer
is killed. The file gets the permissions a plain ``open`` would give (0666 less the umask), not the
0600 of ``mkstemp``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to stream into; it appears at ``path`` (folder created) only when the block ends
    without an exception, and the temporary file is removed otherwise (e.g. a failed checksum)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` atomically, creating its folder."""
    with atomic_open(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
