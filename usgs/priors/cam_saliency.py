"""The CAM + saliency prior: a trained classifier's Grad-CAM and a saliency map, combined per image by
the seed's rules (``usgs.priors.cam_saliency_rules``: ``src/seed/create_guides.py`` of
Amsterdam-Internships/Image-Level-Supervised-Semantic-Segmentation), offline as a prior cache or online
during training (:class:`OnlinePseudoLabeler`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from usgs.data.base import SegmentationDataModule
from usgs.data.prior_store import find_prior_dir
from usgs.data.transforms import normalize
from usgs.nets.weights import read_state_dict
from usgs.priors.base import MaskPrior, PostProcess, State
from usgs.priors.cam_saliency_rules import IGNORE, CRFParams, attention_saliency_pseudo_gt


class AttentionSource(Protocol):
    """``model`` (loaded from a checkpoint by the prior) and a call ``(image [1,3,H,W], labels [1,C])
    -> attention [1,C,H,W] in [0,1]`` (e.g. :class:`usgs.priors.cam.GradCAM`)."""

    model: nn.Module

    def __call__(self, image: Tensor, labels: Tensor) -> Tensor: ...


def load_attention(attention: AttentionSource, checkpoint: str | None) -> AttentionSource:
    """Load a ``train.py`` checkpoint's weights into ``attention.model`` (frozen, eval mode).

    A checkpoint is required: attention from an untrained model would be silently meaningless.
    """
    train_hint = "train the attention model first (python train.py experiment=classifier) and pass "
    if not checkpoint:
        raise ValueError(f"the pseudo labeler needs a trained attention model: {train_hint}"
                         "checkpoint=<run>/checkpoints/<name>.ckpt (e.g. model.pseudo_labeler.checkpoint=...)")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: {train_hint}<run>/checkpoints/<name>.ckpt")
    attention.model.load_state_dict(read_state_dict(path))  # weights_only=True: runs no code from the file
    attention.model.eval().requires_grad_(False)
    return attention


class OnlinePseudoLabeler(nn.Module):
    """Pseudo labels during training for samples that only have image/crop labels (Vaihingen N2 crops).

    ``(image [B,3,H,W] normalised, labels [B,C]) -> int64 [B,H,W]`` (255 = ignore) by the attention
    rules without saliency (aerial tiles have no salient object): attention > ``threshold`` in
    8-connected blobs of more than ``min_attention_pixels``, the most attended class where several
    overlap. An ``nn.Module`` so that the frozen attention model follows the method's device.
    """

    def __init__(self, attention: AttentionSource, checkpoint: str | None, threshold: float = 0.4,
                 min_attention_pixels: int = 25) -> None:
        super().__init__()
        self.attention = load_attention(attention, checkpoint)
        self.model = attention.model  # registered as a sub-module (moves with .to(device))
        self.threshold, self.min_attention_pixels = threshold, min_attention_pixels

    def forward(self, image: Tensor, labels: Tensor) -> Tensor:
        maps = self.attention(image, labels).float().cpu().numpy()
        rgb = np.zeros(image.shape[-2:] + (3,), np.uint8)  # no CRF without saliency: colours unused
        empty = np.zeros(image.shape[-2:], np.uint8)
        out = []
        for b in range(image.shape[0]):
            classes = np.flatnonzero(labels[b].cpu().numpy() > 0)
            out.append(attention_saliency_pseudo_gt(rgb, maps[b, classes], classes.tolist(), empty,
                                                    threshold=self.threshold,
                                                    min_attention_pixels=self.min_attention_pixels))
        return torch.from_numpy(np.stack(out)).long().to(image.device)


# Map resize back to the image: the seed's F.interpolate(size=(h, w)) is nearest; bilinear is smoother.
_RESIZE_OPTIONS: dict[str, dict[str, Any]] = {
    "nearest": {"mode": "nearest"}, "bilinear": {"mode": "bilinear", "align_corners": False}}


def image_labels(raw: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
    """Class ids present in a raw sample: its ``labels`` if given, else its mask's classes."""
    if "labels" in raw:
        return np.flatnonzero(np.asarray(raw["labels"]) > 0)
    values = np.unique(raw["mask"])
    return values[values < num_classes].astype(np.int64)


class AttentionSaliencyPrior(MaskPrior):
    """``prior=cam_saliency``: pseudo labels from a trained model's attention + saliency (module docstring).

    ``model`` is the trained module (``make_priors.py`` loads it from ``prior.checkpoint``) and
    ``attention(model)`` builds the attention source (``GradCAM`` of a classifier, ``RefinedMasks`` of a
    single-stage model). Image-level labels, the only supervision used, come from
    ``datamodule.dataset(split)``; saliency from the dataset's own ``saliency`` (``saliency="dataset"``),
    from a cached saliency prior (its name, e.g. ``saliency_unsup``) or none (``None``: attention
    alone, the "CAM only" baseline). ``input_size`` [H,W] resizes images for the network (the maps
    are resized back, with ``attention_resize`` "nearest" as the seed's ``create_network_attention.py``
    or "bilinear"; the seed's VGG input is 224x224); ``background_index`` is never given
    attention (VOC's background). ``unmatched_label`` and ``fill_label`` default (``None``) to
    ``background_index`` when the data has one (the seed writes background there) and to 255
    (ignore) when it has none.
    """

    class_ids = True  # pseudo labels: the dataset's class ids, scored also without matching

    def __init__(self, model: nn.Module, attention: Callable[[nn.Module], AttentionSource],
                 datamodule: SegmentationDataModule, split: str = "train", saliency: str | None = "dataset",
                 threshold: float = 0.4, min_saliency_fraction: float = 0.01, min_attention_pixels: int = 25,
                 unmatched_label: int | None = None, fill_label: int | None = None, isolated: str = "blob",
                 drop_thin_blobs: bool = True, background_index: int | None = None,
                 crf: dict[str, Any] | None = None, input_size: Sequence[int] | None = None,
                 batch_size: int = 1, postprocess: PostProcess | None = None, seed: int = 0,
                 attention_resize: str = "nearest") -> None:
        super().__init__(batch_size, postprocess, seed)
        if attention_resize not in _RESIZE_OPTIONS:
            raise ValueError(f"attention_resize must be one of {sorted(_RESIZE_OPTIONS)}, got {attention_resize!r}")
        self.resize_options = _RESIZE_OPTIONS[attention_resize]
        model.eval().requires_grad_(False)
        self.attention = attention(model)
        self.dataset = datamodule.dataset(split, transform=None)
        self.num_classes = datamodule.num_classes
        self.saliency_dir = None
        if saliency not in (None, "dataset"):
            if datamodule.prior_root is None:
                raise ValueError(f"saliency={saliency!r} reads a prior cache: set data.prior_root")
            self.saliency_dir = find_prior_dir(
                datamodule.prior_root, datamodule.name, split, saliency, datamodule.data_identity(self.dataset)
            )
        self.use_saliency = saliency is not None
        default = IGNORE if background_index is None else background_index
        self.rules: dict[str, Any] = {
            "threshold": threshold, "min_saliency_fraction": min_saliency_fraction,
            "min_attention_pixels": min_attention_pixels, "isolated": isolated, "drop_thin_blobs": drop_thin_blobs,
            "unmatched_label": default if unmatched_label is None else unmatched_label,
            "fill_label": default if fill_label is None else fill_label}
        self.background_index = background_index
        self.crf = CRFParams(**(crf or {}))
        self.input_size = tuple(input_size) if input_size else None

    @property
    def num_labels(self) -> int:
        return self.num_classes

    def saliency_of(self, index: int, raw: dict[str, np.ndarray]) -> np.ndarray:
        h, w = raw["image"].shape[:2]
        if not self.use_saliency:
            return np.zeros((h, w), dtype=np.uint8)
        if self.saliency_dir is None:
            if "saliency" not in raw:
                raise KeyError(f"{self.dataset.describe(index)} has no saliency: use prior.saliency=<saliency "
                               "prior name> (e.g. saliency_unsup) or prior.saliency=null")
            return raw["saliency"]
        path = self.saliency_dir / f"{self.dataset.ids[index]}.png"
        return np.asarray(Image.open(path))

    def local(self, images: Sequence[np.ndarray], indices: Sequence[int]) -> list[State]:
        states = []
        for image, index in zip(images, indices, strict=True):
            raw = self.dataset.load(index)
            classes = [c for c in image_labels(raw, self.num_classes) if c != self.background_index]
            if not classes:
                states.append({"pseudo": np.full(image.shape[:2], self.rules["fill_label"], np.uint8)})
                continue
            x = normalize(image)[None]
            if self.input_size:
                x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
            labels = torch.zeros(1, self.num_classes)
            labels[0, classes] = 1.0
            maps = self.attention(x, labels)
            maps = F.interpolate(maps, size=image.shape[:2], **self.resize_options)[0, classes]
            pseudo = attention_saliency_pseudo_gt(image, maps.clamp(0, 1).numpy(), classes,
                                                  self.saliency_of(index, raw), crf=self.crf, **self.rules)
            states.append({"pseudo": pseudo})
        return states

    def finalize_raw(self, image: np.ndarray, state: State) -> np.ndarray:
        return state["pseudo"]
