"""Built-in object-centric synthetic dataset (``data=objects``): the demo's data, no files.

``data=shapes`` draws every colour independently of the class, so a class is a shape and a texture and
nothing else; no method learns that from scratch in a few CPU minutes. In real data a semantic class
shares its appearance across images (sheep are white and woolly, buses yellow and boxy), and an image
of an object-centric dataset such as PASCAL VOC shows mostly one object class, large, on a
background. This dataset has that structure:

* class 0 ``background``: one to three wavy bands, each a smooth gradient or fine noise in a random
  colour (any hue, any saturation) at low contrast;
* four object classes, one per image (one or two instances, 0.2-0.36 of the image in radius), each
  with its own shape, high-contrast two-tone texture and colour family (hues 90 degrees apart, wider
  than MaskContrast's hue jitter): ``red disc`` (horizontal stripes), ``lime box`` (checkerboard),
  ``cyan triangle`` (vertical stripes), ``violet cross`` (dots). Stripes and checks alternate with
  the hue, so neither cue alone names all four classes.

An object differs from the background by its texture contrast and compact shape, not by its colour:
backgrounds take every hue, so colour clustering (the k-means prior) confuses objects with
backgrounds (tests/test_data_objects.py), and MaskContrast's photometric augmentation (hue jitter,
grayscale) makes colour an unreliable cue for the network too. No saliency is given by default (a method that
needs one runs an estimator on the images, ``data.prior=saliency_unsup``); ``saliency=oracle`` adds the
ground-truth object pixels, an oracle whose numbers are labelled so. Every sample is rendered from
``numpy.random.default_rng([seed, split, index])``: deterministic, about 1 ms at 48 px.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from usgs.data.base import Transform
from usgs.data.shapes import (
    ShapesDataModule,
    ShapesDataset,
    class_texture,
    pixel_grid,
    shape_region,
    wavy_bands,
)

CLASS_NAMES = ("background", "red disc", "lime box", "cyan triangle", "violet cross")
PALETTE = np.array([[0, 0, 0], [230, 40, 40], [150, 230, 0], [0, 210, 230], [150, 60, 230]], dtype=np.uint8)
# Object class -> (shape id of usgs.data.shapes.shape_region, hue in OpenCV degrees 0..180).
# Shape ids: 3 disc, 4 square, 5 triangle, 6 cross.
_OBJECTS = {1: (3, 0.0), 2: (4, 45.0), 3: (5, 90.0), 4: (6, 135.0)}
# Object radius range (fractions of the image): large, as in object-centric photos (VOC).
OBJECT_RADIUS = (0.2, 0.36)


def _hsv_colour(hue: float, saturation: float, value: float) -> np.ndarray:
    """One RGB colour, float32 [3], from OpenCV HSV (hue 0..180, saturation and value in 0..1)."""
    hsv = np.array([[[hue % 180.0, 255.0 * saturation, 255.0 * value]]], dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 RGB [S,S,3]: wavy bands, each a gradient or fine noise in a random colour, low contrast."""
    num_bands = int(rng.integers(1, 4))
    band = wavy_bands(rng, size, num_bands)
    image = np.zeros((size, size, 3), dtype=np.float32)
    for j in range(num_bands):
        texture = class_texture(int(rng.integers(0, 2)), rng, size)  # shapes' sky gradient / grass noise
        # Any saturation (backgrounds as colourful as objects), but the contrast pulled towards the
        # band's mean: an object stands out by its texture, as a salient object does.
        grey = texture.mean(axis=2, keepdims=True)
        texture = grey + rng.uniform(0.0, 1.0) * (texture - grey)
        mean = texture.reshape(-1, 3).mean(0)
        image[band == j] = (mean + rng.uniform(0.15, 0.5) * (texture - mean))[band == j]
    return image


def _pattern(cls: int, size: int) -> np.ndarray:
    """Two-tone pattern [S,S,1] of object class ``cls``: a 6 px period at 48 px, coarse enough to
    survive the training crops; stripes are horizontal or vertical so that flips keep them."""
    yy, xx = pixel_grid(size)
    period = 6.0 * size / 48.0
    if cls == 1:  # red disc: horizontal stripes
        pattern = yy % period < period / 2
    elif cls == 2:  # lime box: checkerboard
        pattern = (yy // (period / 2) + xx // (period / 2)) % 2 == 1
    elif cls == 3:  # cyan triangle: vertical stripes
        pattern = xx % period < period / 2
    else:  # violet cross: dots
        pattern = (yy % period - period / 2) ** 2 + (xx % period - period / 2) ** 2 <= (period / 3) ** 2
    return pattern[..., None]


def _object_texture(cls: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 RGB [S,S,3] texture of object class ``cls``: its pattern in two tones of its colour family."""
    hue = _OBJECTS[cls][1]
    h = hue + rng.uniform(-12.0, 12.0)
    light = _hsv_colour(h, rng.uniform(0.55, 1.0), rng.uniform(0.65, 1.0))
    dark = light * rng.uniform(0.3, 0.55)
    return np.where(_pattern(cls, size), dark, light)


def render_objects(rng: np.random.Generator, size: int, max_objects: int = 2) -> dict[str, np.ndarray]:
    """One raw sample: ``image`` uint8 [S,S,3], ``mask`` uint8 [S,S]."""
    image = _background(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    cls = int(rng.integers(1, len(CLASS_NAMES)))
    for _ in range(int(rng.integers(1, max_objects + 1))):
        region = shape_region(_OBJECTS[cls][0], rng, size, OBJECT_RADIUS)
        image[region] = _object_texture(cls, rng, size)[region]
        mask[region] = cls
    return {"image": np.clip(image, 0, 255).astype(np.uint8), "mask": mask}


class ObjectsDataset(ShapesDataset):
    """Object-centric synthetic images (see module docstring); ``num_samples`` samples of ``split``."""

    class_names = CLASS_NAMES

    def __init__(self, split: str, num_samples: int, image_size: int = 48, seed: int = 0, max_objects: int = 2,
                 transform: Transform | None = None, prior_dir: Path | None = None,
                 oracle_saliency: bool = False) -> None:
        super().__init__(split, num_samples, image_size, seed, max_objects, transform, prior_dir, oracle_saliency)

    @staticmethod
    def foreground(mask: np.ndarray) -> np.ndarray:
        """Ground-truth object pixels (bool [H,W]): every class but the background."""
        return mask > 0

    def render(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return render_objects(rng, self.image_size, self.max_objects)


class ObjectsDataModule(ShapesDataModule):
    """DataModule of the object-centric synthetic images (``data=objects``, the demo's data).

    ``data_seed`` fixes the generated images; the base ``seed`` only drives the training shuffle.
    """

    name = "objects"
    class_names = CLASS_NAMES
    palette = PALETTE
    dataset_class = ObjectsDataset

    def __init__(self, *, image_size: int = 48, num_train: int = 512, num_val: int = 128, num_test: int = 128,
                 data_seed: int = 0, max_objects: int = 2, saliency: str | None = None, **kwargs: Any) -> None:
        super().__init__(image_size=image_size, num_train=num_train, num_val=num_val, num_test=num_test,
                         data_seed=data_seed, max_objects=max_objects, saliency=saliency, **kwargs)
