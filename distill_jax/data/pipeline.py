"""From a config to training and test arrays in one pixel space.

A distilled set lives in the space its distiller used; the real test split must be put
through the same transform, fitted on the real training split (docs/method.md §4). This module is
the one place where that pairing happens.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib

import numpy as np

from distill_jax import losses
from distill_jax.data import datasets, preprocess
from distill_jax.formats import distilled

SOURCES = ("real", "distilled")  # config.data.source: a (subset of a) real split, or a distilled set


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


def cache_dir() -> pathlib.Path:
    """Where fitted transforms are kept between runs (DISTILL_JAX_CACHE, else ~/.cache/distill_jax)."""
    return pathlib.Path(os.environ.get("DISTILL_JAX_CACHE", pathlib.Path.home() / ".cache" / "distill_jax"))


def fitted_preprocessing(recipe: str, train_images_uint8: np.ndarray) -> preprocess.Preprocessing:
    """`preprocess.fit` on the real training split, cached on disk by recipe and image content.

    A ZCA fit on 50,000 CIFAR images takes minutes (a 3072x3072 eigendecomposition); every
    cell of a reproduction needs the same one.
    """
    digest = hashlib.sha256(np.ascontiguousarray(train_images_uint8).data).hexdigest()[:20]
    path = cache_dir() / "preprocessing" / f"{recipe}-{digest}.npz"
    if path.is_file():
        try:
            return preprocess.load(path)
        except Exception as err:  # a damaged cache entry is refitted, never trusted
            logging.warning("ignoring unreadable cached preprocessing %s: %s", path, err)
    prep = preprocess.fit(recipe, datasets.to_float(train_images_uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    prep.save(path)
    return prep


def load_training_data(data_cfg) -> TrainingData:
    """Builds the arrays a run trains and evaluates on, as `data_cfg` (config.data) says."""
    real_train = _real_split(data_cfg.dataset, "train", data_cfg.data_dir)
    real_test = _real_split(data_cfg.dataset, data_cfg.test_split, data_cfg.data_dir)
    num_classes = real_train.info.num_classes
    if data_cfg.source == "real":
        recipe = "standardize" if data_cfg.preprocessing == "auto" else data_cfg.preprocessing
        subset = real_train
        if data_cfg.per_class:
            subset = datasets.class_balanced_subset(real_train, per_class=data_cfg.per_class, seed=data_cfg.subset_seed)
        prep = fitted_preprocessing(recipe, real_train.images)
        train_images = prep.apply(datasets.to_float(subset.images))
        train_labels = subset.labels.astype(np.int64)
        what = f"{data_cfg.dataset} real subset, {data_cfg.per_class or 'all'} per class"
    else:
        kwargs = {"format": data_cfg.distilled_format} if data_cfg.distilled_format else {}
        dset = distilled.load_distilled(data_cfg.distilled_path, **kwargs)
        recipe = dset.preprocessing if data_cfg.preprocessing == "auto" else data_cfg.preprocessing
        if dset.num_classes != num_classes:
            raise ValueError(f"distilled set {data_cfg.distilled_path}: num_classes {dset.num_classes} but "
                             f"data.dataset {data_cfg.dataset!r} has {num_classes}")
        if tuple(dset.images.shape[1:]) != tuple(real_test.images.shape[1:]):
            raise ValueError(f"distilled set {data_cfg.distilled_path}: images of shape {dset.images.shape[1:]} but "
                             f"data.dataset {data_cfg.dataset!r} has {real_test.images.shape[1:]}")
        prep = fitted_preprocessing(recipe, real_train.images)
        train_images = np.asarray(dset.images, np.float32)
        labels = np.asarray(dset.labels)
        train_labels = np.asarray(losses.label_temperature(labels, data_cfg.label_temperature), np.float32) if labels.ndim == 2 else labels.astype(np.int64)
        what = f"distilled set {data_cfg.distilled_path} ({dset.provenance.get('format', '?')})"
    test_images = prep.apply(datasets.to_float(real_test.images))
    logging.info("data: %s; %d training images, %d test images, preprocessing %s",
                 what, len(train_images), len(test_images), recipe)
    return TrainingData(np.asarray(train_images, np.float32), train_labels, np.asarray(test_images, np.float32),
                        real_test.labels.astype(np.int64), num_classes, prep, what)
