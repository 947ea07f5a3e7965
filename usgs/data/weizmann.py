"""Weizmann Horse (Borenstein & Ullman, 2002): 328 side-view horses with figure/ground masks.

Layout ``<root>/rgb/horseNNN.jpg`` (colour images, at a different resolution than the masks) and
``<root>/figure_ground/horseNNN.jpg`` (JPEG masks, thresholded at 128). Served as a 2-class dataset
(background, horse) at mask resolution, with ``saliency`` = the horse, for training and scoring
saliency priors. A seeded three-way split puts ``test_fraction`` of the images in test and
``val_fraction`` in val (``usgs.data.splits.holdout_split``).
"""

from __future__ import annotations

from typing import Any

from usgs.data.folder import FolderDataModule


class WeizmannDataModule(FolderDataModule):
    """Weizmann horses through the folder loader with figure/ground options fixed."""

    name = "weizmann"

    def __init__(self, **kwargs: Any) -> None:
        fixed: dict[str, Any] = {
            "class_names": ["background", "horse"],
            "palette": [[0, 0, 0], [139, 69, 19]],
            "image_dir": "rgb",
            "mask_dir": "figure_ground",
            "mask_ext": ".jpg",
            # JPEG masks are not exactly 0/255; 128 is the midpoint
            "mask_threshold": 128,
            "resize_image_to_mask": True,
            "saliency_from_mask": True,
        }
        clash = sorted(set(fixed) & set(kwargs))
        if clash:
            raise ValueError(f"data=weizmann fixes {clash}; use data=folder to change them")
        super().__init__(**fixed, **kwargs)
