"""Pictures of a set: one row per class, the images mapped back to display pixels.

Used by the distillers (a grid at every checkpoint), by every training run (its training
set, once) and by `distill-jax show` (any readable set). Pixels come in the set's own space
and go through the inverse of its preprocessing (ZCA included) before display.
"""
from __future__ import annotations

import math
import pathlib
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from distill_jax import atomic

LABEL_WIDTH = 84  # pixels of the caption column when class names are drawn


def class_of(labels: np.ndarray) -> np.ndarray:
    """Class indices of hard labels (N,) or of label vectors (N, K) (their argmax)."""
    labels = np.asarray(labels)
    return labels.argmax(-1) if labels.ndim == 2 else labels.astype(np.int64)


def image_grid(pixels: np.ndarray, classes: np.ndarray, num_classes: int, *, max_per_class: int = 10,
               class_names: Optional[Sequence[str]] = None, gap: int = 1) -> np.ndarray:
    """uint8 grid: row k holds the first `max_per_class` images of class k (in set order),
    with the class name drawn at the left when `class_names` is given.

    `pixels` are display pixels in [0, 1] (values outside are clipped). Images smaller than
    32 px are enlarged by an integer factor so the grid stays legible.
    """
    pixels = np.asarray(pixels, np.float32)
    classes = np.asarray(classes)
    if pixels.ndim != 4 or len(pixels) != len(classes) or len(pixels) == 0:
        raise ValueError(f"image_grid: expected (N, H, W, C) images with N labels, got {pixels.shape} "
                         f"and {classes.shape}")
    zoom = max(1, math.ceil(32 / max(pixels.shape[1:3])))
    pixels = np.clip(pixels, 0.0, 1.0).repeat(zoom, axis=1).repeat(zoom, axis=2)
    _, h, w, c = pixels.shape
    rows = [np.flatnonzero(classes == k)[:max_per_class] for k in range(num_classes)]
    cols = max(1, max(len(r) for r in rows))
    grid = np.ones((num_classes * (h + gap) - gap, cols * (w + gap) - gap, c), np.float32)
    for k, members in enumerate(rows):
        for j, index in enumerate(members):
            grid[k * (h + gap):k * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = pixels[index]
    grid = np.round(grid * 255).astype(np.uint8)
    grid = grid[..., 0] if c == 1 else grid
    if class_names is None:
        return grid
    canvas = Image.new(Image.fromarray(grid).mode, (LABEL_WIDTH + grid.shape[1], grid.shape[0]),
                       255 if c == 1 else (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(class_names[:num_classes]):
        draw.text((2, k * (h + gap) + max(0, h // 2 - 5)), str(name)[:13], fill=0 if c == 1 else (0, 0, 0))
    return np.asarray(canvas)


def save_png(path, image: np.ndarray) -> pathlib.Path:
    """Writes a uint8 image as PNG, whole (`atomic.write_with`)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_with(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


def save_set_grid(path, images: np.ndarray, labels: np.ndarray, preprocessing, num_classes: int, *,
                  class_names: Optional[Sequence[str]] = None, max_per_class: int = 10) -> np.ndarray:
    """The PNG grid of a set in its pixel space (`preprocessing.inverse` maps it back, for the
    shown images only: a whole training split need not be un-whitened); returns the grid."""
    classes = class_of(labels)
    shown = np.concatenate([np.flatnonzero(classes == k)[:max_per_class] for k in range(num_classes)])
    pixels = preprocessing.inverse(np.asarray(images[shown], np.float32))
    grid = image_grid(np.asarray(pixels), classes[shown], num_classes, max_per_class=max_per_class,
                      class_names=class_names)
    save_png(path, grid)
    return grid
