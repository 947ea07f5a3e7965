"""A random stream that belongs to training alone, so nothing else a run does can move it.

Validation, sanity checks, callbacks, logging and DataLoader start-up all draw from torch's global
generator. Training steps (dropout, MoCo's batch shuffle, MaskContrast's per-view jitter) draw from it
too, so without this they would depend on how much validation ran before them: a label-free run
would then see the ground truth through the random stream, and a resumed run would not repeat an
uninterrupted one. :class:`TrainingRNG` swaps its own state in for the duration of a training batch
and out again afterwards; its state travels in the checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Keeps the training stream apart from the one that initialised the weights (both start from the seed).
_STREAM_OFFSET = 0x5EED_7A1


class TrainingRNG:
    """Own CPU (and current CUDA device) generator states, entered around each training batch."""

    def __init__(self) -> None:
        self.states: dict[str, Tensor] | None = None
        self._outside: dict[str, Tensor] | None = None
        self._restored = False  # states came from a checkpoint (which holds rank 0's)

    @staticmethod
    def _capture(device: torch.device) -> dict[str, Tensor]:
        states = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(device)
        return states

    @staticmethod
    def _apply(states: dict[str, Tensor], device: torch.device) -> None:
        torch.set_rng_state(states["cpu"])
        if device.type == "cuda" and "cuda" in states:
            torch.cuda.set_rng_state(states["cuda"], device)

    def enter(self, device: torch.device, rank: int = 0) -> None:
        """Save the global state and switch to the training stream (seeded on first use)."""
        self._outside = self._capture(device)
        if self.states is None:  # seeded from the run's seed (seed_everything) and the process rank
            torch.manual_seed((torch.initial_seed() + _STREAM_OFFSET + 1_000_003 * rank) % 2**63)
        elif self._restored and rank > 0:  # other ranks branch off rank 0's restored stream
            torch.manual_seed((int(self.states["cpu"].long().sum()) + 1_000_003 * rank) % 2**63)
        else:
            self._apply(self.states, device)
        self._restored = False

    def exit(self, device: torch.device) -> None:
        """Keep the training stream's state and give the global generator its old state back."""
        if self._outside is None:
            return
        self.states = self._capture(device)
        self._apply(self._outside, device)
        self._outside = None

    def state_dict(self) -> dict[str, Tensor] | None:
        return None if self.states is None else {k: v.clone() for k, v in self.states.items()}

    def load_state_dict(self, states: dict[str, Tensor] | None) -> None:
        self.states = None if states is None else {k: v.clone().cpu() for k, v in states.items()}
        self._restored = states is not None
