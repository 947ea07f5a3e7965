"""Sliding-window inference for images larger than the training crops (e.g. Vaihingen tiles)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)``; the last window is aligned to the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def sliding_window_logits(predict: Callable[[Tensor], Tensor], image: Tensor, window: int,
                          stride: int) -> Tensor:
    """Average ``predict`` logits over overlapping ``window`` x ``window`` tiles.

    ``image [B,3,H,W] -> logits [B,K,H,W]``; images smaller than the window are zero-padded.
    ``predict`` must return logits ``[B,K,h,w]`` for a tile ``[B,3,h,w]``.
    """
    b, _, h, w = image.shape
    pad_h, pad_w = max(0, window - h), max(0, window - w)
    padded = F.pad(image, (0, pad_w, 0, pad_h))
    ph, pw = padded.shape[-2:]
    total: Tensor | None = None
    count = torch.zeros(1, 1, ph, pw, device=image.device)
    for y in window_starts(ph, window, stride):
        for x in window_starts(pw, window, stride):
            tile = predict(padded[:, :, y:y + window, x:x + window])
            if tile.dim() != 4:
                raise ValueError("sliding_window needs predict() to return logits [B,K,h,w], "
                                 f"got shape {tuple(tile.shape)}")
            if total is None:
                total = torch.zeros(b, tile.shape[1], ph, pw, device=image.device, dtype=tile.dtype)
            total[:, :, y:y + window, x:x + window] += tile
            count[:, :, y:y + window, x:x + window] += 1
    assert total is not None
    return (total / count)[:, :, :h, :w]
