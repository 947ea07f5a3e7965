"""RowBuffer: the evaluation protocols' fit samples, filled in place."""

import pytest
import torch

from usgs.evaluation.row_buffer import RowBuffer


def test_rows_equal_the_concatenation_and_share_one_storage() -> None:
    pieces = [torch.randn(n, 5) for n in (3, 0, 7, 2)]
    buffer = RowBuffer(capacity=20)
    for piece in pieces:
        buffer.append(piece)
    rows = buffer.rows()
    assert torch.equal(rows, torch.cat(pieces)) and len(buffer) == 12
    assert rows.untyped_storage().nbytes() == 20 * 5 * 4  # the capacity, allocated once


@pytest.mark.parametrize("capacity", [None, 1, 4])
def test_grows_past_an_unknown_or_short_capacity(capacity: int | None) -> None:
    pieces = [torch.arange(n * 2).view(n, 2) + 100 * i for i, n in enumerate((3, 5, 1, 9))]
    buffer = RowBuffer(capacity)
    for piece in pieces:
        buffer.append(piece)
    assert torch.equal(buffer.rows(), torch.cat(pieces))
    assert buffer.rows().dtype == torch.int64


def test_mismatched_rows_and_empty_buffer_say_what_is_wrong() -> None:
    buffer = RowBuffer(4)
    with pytest.raises(ValueError, match="nothing was appended"):
        buffer.rows()
    buffer.append(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        buffer.append(torch.zeros(1, 4))
