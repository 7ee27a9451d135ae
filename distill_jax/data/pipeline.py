"""From a config to training and test arrays in one pixel space.

A distilled set lives in the space its distiller used; the real test split must be put
through the same transform, fitted on the real training split (SPEC 4). This module is
the one place where that pairing happens.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from distill_jax import losses
from distill_jax.data import datasets, preprocess


@dataclasses.dataclass(frozen=True)
class TrainingData:
    train_images: np.ndarray      # float32 NHWC, preprocessed
    train_labels: np.ndarray      # int64 (N,) or float32 (N, K) soft targets
    test_images: np.ndarray       # float32 NHWC, preprocessed identically
    test_labels: np.ndarray       # int64 (M,)
    num_classes: int
    preprocessing: preprocess.Preprocessing
    description: str


def _real_split(dataset: str, split: str, data_dir: str):
    return datasets.load_dataset(dataset, split, data_dir=data_dir or None)


def load_training_data(data_cfg, *, fit_images: Optional[np.ndarray] = None) -> TrainingData:
    """Builds the arrays a run trains and evaluates on, as `data_cfg` (config.data) says."""
    real_train = _real_split(data_cfg.dataset, "train", data_cfg.data_dir)
    real_test = _real_split(data_cfg.dataset, data_cfg.test_split, data_cfg.data_dir)
    fit_on = datasets.to_float(real_train.images) if fit_images is None else fit_images
    num_classes = real_train.info.num_classes
    if data_cfg.source == "real":
        recipe = "standardize" if data_cfg.preprocessing == "auto" else data_cfg.preprocessing
        subset = real_train
        if data_cfg.per_class:
            subset = datasets.class_balanced_subset(real_train, per_class=data_cfg.per_class, seed=data_cfg.subset_seed)
        prep = preprocess.fit(recipe, fit_on)
        train_images = prep.apply(datasets.to_float(subset.images))
        train_labels = subset.labels.astype(np.int64)
        what = f"{data_cfg.dataset} real subset, {data_cfg.per_class or 'all'} per class"
    else:
        from distill_jax.data import distilled

        kwargs = {"format": data_cfg.distilled_format} if data_cfg.distilled_format else {}
        dset = distilled.load_distilled(data_cfg.distilled_path, **kwargs)
        recipe = dset.preprocessing if data_cfg.preprocessing == "auto" else data_cfg.preprocessing
        if dset.num_classes != num_classes:
            raise ValueError(f"distilled set {data_cfg.distilled_path}: num_classes {dset.num_classes} but "
                             f"data.dataset {data_cfg.dataset!r} has {num_classes}")
        if tuple(dset.images.shape[1:]) != tuple(real_test.images.shape[1:]):
            raise ValueError(f"distilled set {data_cfg.distilled_path}: images of shape {dset.images.shape[1:]} but "
                             f"data.dataset {data_cfg.dataset!r} has {real_test.images.shape[1:]}")
        prep = preprocess.fit(recipe, fit_on)
        train_images = np.asarray(dset.images, np.float32)
        labels = np.asarray(dset.labels)
        train_labels = np.asarray(losses.label_temperature(labels, data_cfg.label_temperature), np.float32) if labels.ndim == 2 else labels.astype(np.int64)
        what = f"distilled set {data_cfg.distilled_path} ({dset.provenance.get('format', '?')})"
    test_images = prep.apply(datasets.to_float(real_test.images))
    logging.info("data: %s; %d training images, %d test images, preprocessing %s",
                 what, len(train_images), len(test_images), recipe)
    return TrainingData(np.asarray(train_images, np.float32), train_labels, np.asarray(test_images, np.float32),
                        real_test.labels.astype(np.int64), num_classes, prep, what)
