"""What every mask prior implements, so that one cache runner (``usgs.priors.cache``) serves them all.

A prior is computed in three phases, which lets per-image work run in parallel workers or in
torch batches, lets a killed run resume from per-image intermediate results, and supports the
two-stage recipes (per-image clustering, then one global clustering of all per-image centres):

1. ``local(images, indices)`` -> one picklable state dict of numpy arrays per image (cached on disk);
2. ``fit(states, load_image)`` -> learns the dataset-level part (global clusters, a self-trained
   net); a no-op for purely per-image priors;
3. ``finalize(image, state)`` -> the uint8 [H,W] prior map (255 = ignore), post-processed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import numpy as np

State = dict[str, np.ndarray]
ImageLoader = Callable[[int], np.ndarray]
PostProcess = Callable[[np.ndarray], np.ndarray]


class MaskPrior(ABC):
    """Base class of all priors (k-means, saliency ...).

    Class attributes:
        kind: "semantic" (cluster ids 0..num_labels-1) or "saliency" (1 = foreground, 0 = background).
        class_ids: whether a semantic prior's ids are the dataset's class ids (pseudo labels), scored
            then also without matching.
        needs_fit: whether ``fit`` must see every image's local state before ``finalize``.
        fit_keys: the state keys ``fit`` reads (None: all); the cache loads only these for the fit.
        parallel: whether ``local`` is CPU-bound per-image work worth spreading over processes
            (False for batched torch priors, which use torch's own threads / the GPU).
    Instance attributes:
        batch_size: images per ``local`` call.
        postprocess: optional callable on the final uint8 map (e.g. :class:`~usgs.priors.morphology.Morphology`).
        seed: base seed; per-image / per-batch randomness derives from ``seed`` and the image index so
            results do not depend on how images were split among workers or resumed runs.
    """

    kind: ClassVar[Literal["semantic", "saliency"]] = "semantic"
    class_ids: ClassVar[bool] = False
    needs_fit: bool = False
    fit_keys: ClassVar[tuple[str, ...] | None] = None
    parallel: ClassVar[bool] = False

    def __init__(self, batch_size: int = 1, postprocess: PostProcess | None = None, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.postprocess = postprocess
        self.seed = int(seed)

    @property
    @abstractmethod
    def num_labels(self) -> int:
        """Number of distinct non-ignore values the prior writes (G clusters, or 2 for saliency)."""

    @abstractmethod
    def local(self, images: Sequence[np.ndarray], indices: Sequence[int]) -> list[State]:
        """Per-image states for uint8 [H,W,3] RGB ``images`` whose dataset positions are ``indices``."""

    def fit(self, states: Sequence[State], load_image: ImageLoader) -> None:  # noqa: B027 - optional hook
        """Learn the dataset-level part from all local states (images via ``load_image(i)``)."""

    def fit_state(self) -> State:
        """Arrays that ``load_fit_state`` restores (cached so a resumed run skips ``fit``)."""
        return {}

    def load_fit_state(self, state: State) -> None:  # noqa: B027 - optional hook
        """Restore what ``fit`` learned."""

    @abstractmethod
    def finalize_raw(self, image: np.ndarray, state: State) -> np.ndarray:
        """The uint8 [H,W] prior of one image before post-processing."""

    def finalize(self, image: np.ndarray, state: State) -> np.ndarray:
        """The final uint8 [H,W] prior map (raw map, then ``postprocess``)."""
        out = self.finalize_raw(image, state)
        if out.dtype != np.uint8 or out.shape != image.shape[:2]:
            raise RuntimeError(
                f"{type(self).__name__} produced {out.dtype} {out.shape}, expected uint8 {image.shape[:2]}"
            )
        return self.postprocess(out) if self.postprocess is not None else out
