"""`distill-jax show PATH --out grid.png`: any readable set as a picture.

The images are mapped back to display pixels through the inverse of their pixel space: a
set's own stored transform where the distiller saved one, else the transform of its recipe
fitted on the matching real training split from the data root (ZCA included; cached like
every other fit). Learned labels also get a heatmap of the soft targets a student sees.
"""
from __future__ import annotations

import pathlib
from typing import Optional

import numpy as np

from distill_jax import losses
from distill_jax.data import datasets, grid, pipeline, preprocess
from distill_jax.distillation.distill_mode import PREPROCESSING_NAME
from distill_jax.errors import UserError
from distill_jax.formats.distilled import load_distilled
from distill_jax.report import plots

# Which dataset to guess among those with a set's image shape and class count (Fashion-MNIST before
# MNIST; the CIFAR-10 (JPEG) files before the official CIFAR-10 archives when both could be meant).
GUESS_ORDER = ("fashion_mnist", "cifar10_jpeg", "cifar10", "cifar100", "tiny_imagenet")


class ShowError(UserError, ValueError):
    """The set cannot be drawn as asked (no matching real dataset to undo its preprocessing)."""


def matching_dataset(dset, path) -> str:
    """The real dataset whose training split a set's pixel space was fitted on, from its shape."""
    fits = datasets.datasets_with(dset.image_shape, dset.num_classes)
    if not fits:
        raise ShowError(f"{path}: no known dataset has images {dset.images.shape[1:]} and {dset.num_classes} classes; "
                        "give --dataset (the real set whose training split its preprocessing was fitted on)")
    ranked = sorted(fits, key=lambda name: GUESS_ORDER.index(name) if name in GUESS_ORDER else len(GUESS_ORDER))
    name = ranked[0]
    if (
        name == "cifar10_jpeg"
        and "cifar10" in ranked
        and not (datasets.data_root() / "cifar10_jpeg_train.npz").is_file()
    ):
        name = "cifar10"  # the official archives
    return name


def show_set(path, out, *, dataset: Optional[str] = None, data_dir: Optional[str] = None,
             preprocessing: Optional[str] = None, label_temperature: float = 0.3, **load_options) -> dict:
    """Draws the set at `path` to `out` (and `<out>_labels.png` for learned labels)."""
    path, out = pathlib.Path(path), pathlib.Path(out)
    if dataset is not None:
        datasets.check_dataset_name(dataset, "--dataset")
    dset = load_distilled(str(path), **load_options)
    pipeline.check_claimed_dataset(dset)
    recipe = preprocessing or dset.preprocessing
    stored = (path if path.is_dir() else path.parent) / PREPROCESSING_NAME
    class_names = None
    if dataset or (recipe != "none" and not stored.is_file()):  # class names, or the split to fit on
        dataset = dataset or matching_dataset(dset, path)
        real = datasets.load_dataset(dataset, "train", data_dir=data_dir)
        pipeline.check_set_fits(dset, dataset, real.info.image_shape, real.info.num_classes, field="--dataset",
                                where=str(path), error=ShowError)
        class_names = real.info.class_names
    if stored.is_file() and preprocessing is None:
        transform, fitted_on = preprocess.load(stored), f"the distiller's stored transform ({stored.name})"
    elif recipe == "none":
        transform, fitted_on = preprocess.fit("none", dset.images[:2]), "none"
    else:
        transform, fitted_on = pipeline.fitted_preprocessing(recipe, real.images), f"{dataset} training split"
    grid.save_set_grid(out, dset.images, dset.labels, transform, dset.num_classes,
                       class_names=class_names or [str(k) for k in range(dset.num_classes)])
    result = {"path": str(path), "out": str(out), "preprocessing": recipe, "inverse_of": fitted_on,
              "images": len(dset.images), "label_kind": "learned" if dset.labels.ndim == 2 else "hard"}
    if dset.labels.ndim == 2:
        targets = np.asarray(losses.label_temperature(dset.labels, label_temperature))
        labels_out = out.with_name(out.stem + "_labels.png")
        plots.plot_label_distribution(targets, class_names or range(dset.num_classes), labels_out,
                                      title=f"learned labels of {path.name}: softmax(y / {label_temperature})")
        result["labels_out"] = str(labels_out)
    return result
