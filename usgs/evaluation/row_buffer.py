"""One preallocated tensor for the rows an evaluation protocol samples from every image.

The k-means and linear-probe fits keep ``pixels_per_image`` feature rows of every image of a split:
N x pixels_per_image x D floats (4,000 images x 100 x 512 x 4 B = 0.8 GB). Kept as per-image pieces and
joined by ``torch.cat``, the split's sample is held twice at the moment of the join (and the pieces
stayed alive during the fit): ``eval_linear_probe`` at N = 4,000 peaked at 2.7 GiB where the sample is
0.6 GB (BENCHMARKS.md "Scale"). Filled in place, it is held once.
"""

from __future__ import annotations

from torch import Tensor


class RowBuffer:
    """``append(rows [n, *shape])`` into one tensor of ``capacity`` rows; ``rows()`` is the filled part
    (a view, no copy). ``capacity`` is an upper bound (images x rows per image); when it is unknown or
    exceeded the tensor grows by 1.5x (one copy)."""

    def __init__(self, capacity: int | None = None) -> None:
        self._capacity = max(int(capacity or 0), 1)
        self._data: Tensor | None = None
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, rows: Tensor) -> None:
        n = rows.shape[0]
        if self._data is None:
            self._data = rows.new_empty((max(self._capacity, n), *rows.shape[1:]))
        elif self._data.shape[1:] != rows.shape[1:] or self._data.dtype != rows.dtype:
            raise ValueError(f"RowBuffer: rows of shape {tuple(rows.shape[1:])} / {rows.dtype} after "
                             f"{tuple(self._data.shape[1:])} / {self._data.dtype}")
        elif self._n + n > self._data.shape[0]:
            grown = self._data.new_empty((max(self._data.shape[0] * 3 // 2, self._n + n), *self._data.shape[1:]))
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : self._n + n] = rows
        self._n += n

    def rows(self) -> Tensor:
        if self._data is None:
            raise ValueError("RowBuffer: nothing was appended")
        return self._data[: self._n]
