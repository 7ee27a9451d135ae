"""From a config to training and test arrays in one pixel space.

A distilled set lives in the space its distiller used; the real test split must be put
through the same transform, fitted on the real training split (docs/method.md §4). This module is
the one place where that pairing happens.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib

import numpy as np

from distill_jax import losses, paths
from distill_jax.data import datasets, preprocess
from distill_jax.errors import UserError
from distill_jax.formats import distilled

SOURCES = ("real", "distilled")  # config.data.source: a (subset of a) real split, or a distilled set


class DataConfigError(UserError, ValueError):
    """config.data asks for what the data cannot give: an unknown dataset, more images per class
    than the split holds, a distilled set of another dataset's shape or class count."""


def claimed_dataset(dset: distilled.DistilledSet) -> str | None:
    """The dataset a set says it was distilled from (this project's own files record it), if any."""
    for record in (dset.provenance, dset.provenance.get("derived_from")):
        if isinstance(record, dict) and isinstance(record.get("dataset"), str) and record["dataset"]:
            return record["dataset"]
    return None


def check_claimed_dataset(dset: distilled.DistilledSet) -> None:
    """A set that names the dataset it was distilled from must have that dataset's image shape and
    class count (where they are fixed: `datasets.known_signature`); DistilledFormatError otherwise."""
    name = claimed_dataset(dset)
    known = datasets.known_signature(name) if name else None
    if known is None:
        return
    shape, classes = known
    if (tuple(dset.image_shape), dset.num_classes) != (shape, classes):
        where = dset.provenance.get("path") or "<in-memory DistilledSet>"
        raise distilled.DistilledFormatError(
            f"{where}: field 'metadata.provenance.dataset': the set says it was distilled from {name!r}, which has "
            f"images {shape} and {classes} classes, but it holds images {tuple(dset.image_shape)} and "
            f"{dset.num_classes} classes; the file is corrupt or mislabelled")


def check_set_fits(dset: distilled.DistilledSet, dataset: str, image_shape, num_classes: int, *, field: str,
                   where: str, error: type[UserError] = DataConfigError) -> None:
    """A set trains and is scored against `dataset` (named by `field`, e.g. "config field
    'data.dataset'"), whose images have `image_shape` and `num_classes` classes: the set must have
    the same, else `error` naming the field and the datasets the set would fit."""
    have = (tuple(int(d) for d in dset.image_shape), int(dset.num_classes))
    want = (tuple(int(d) for d in image_shape), int(num_classes))
    if have == want:
        return
    fits = datasets.datasets_with(*have)
    hint = (f"expected {field} to be one it fits: {', '.join(fits)}" if fits
            else f"no known dataset has images of shape {have[0]} and {have[1]} classes")
    raise error(f"{field} = {dataset!r} has images of shape {want[0]} and {want[1]} classes, but the distilled set "
                f"{where} has images of shape {have[0]} and {have[1]} classes; {hint}")


@dataclasses.dataclass(frozen=True)
class TrainingData:
    train_images: np.ndarray      # float32 NHWC, preprocessed
    train_labels: np.ndarray      # int64 (N,) or float32 (N, K) soft targets
    test_images: np.ndarray       # float32 NHWC, preprocessed identically
    test_labels: np.ndarray       # int64 (M,)
    num_classes: int
    preprocessing: preprocess.Preprocessing
    description: str
    sha256: dict = dataclasses.field(default_factory=dict)  # a distilled set's files: {file name: sha256}


def _real_split(dataset: str, split: str, data_dir: str):
    return datasets.load_dataset(dataset, split, data_dir=data_dir or None)


def fitted_on(dataset: str, train_images_uint8: np.ndarray) -> dict:
    """The provenance a transform fitted on `dataset`'s training split records (`Preprocessing.fitted_on`)."""
    digest = hashlib.sha256(np.ascontiguousarray(train_images_uint8).data).hexdigest()
    return {"dataset": dataset, "split": "train", "images_sha256": digest}


def fitted_preprocessing(recipe: str, train_images_uint8: np.ndarray, *, dataset: str = "") -> preprocess.Preprocessing:
    """`preprocess.fit` on the real training split, cached on disk by recipe and image content;
    with `dataset`, the result records what it was fitted on (`fitted_on`).

    A ZCA fit on 50,000 CIFAR images takes minutes (a 3072x3072 eigendecomposition); every
    cell of a reproduction needs the same one.
    """
    provenance = fitted_on(dataset, train_images_uint8)
    path = paths.preprocessing_cache() / f"{recipe}-{provenance['images_sha256'][:20]}.npz"
    prep = None
    if path.is_file():
        try:
            prep = preprocess.load(path)
        except Exception as err:  # a damaged cache entry is refitted, never trusted
            logging.warning("ignoring unreadable cached preprocessing %s: %s", path, err)
    if prep is None:
        prep = preprocess.fit(recipe, datasets.to_float(train_images_uint8))
        path.parent.mkdir(parents=True, exist_ok=True)
        prep.save(path)
    return dataclasses.replace(prep, fitted_on=provenance) if dataset else prep


def saved_preprocessing(data_cfg, recipe: str, image_shape, train_images_uint8=None) -> preprocess.Preprocessing:
    """The fitted transform saved at `data_cfg.preprocessing_path` (`Preprocessing.save`), checked
    against this run: its recipe must be `recipe`, its images of `image_shape`, and what it records
    having been fitted on (`fitted_on`, if anything) `data_cfg.dataset`'s training split, the very
    images when `train_images_uint8` is given. Every mismatch names the file."""
    path = pathlib.Path(data_cfg.preprocessing_path)
    where = f"config field 'data.preprocessing_path' = {str(path)!r}"
    if not path.is_file():
        raise preprocess.PreprocessingError(
            f"{where}: no such file (expected a fitted transform saved by "
            "distill_jax.data.preprocess, e.g. a distiller's distilled.preprocessing.npz)"
        )
    prep = preprocess.load(path)
    needed = f"data.preprocessing = {data_cfg.preprocessing!r}" + (
        ", the distilled set's own recipe" if data_cfg.preprocessing == "auto" else "")
    if prep.recipe != recipe:
        raise preprocess.PreprocessingError(f"{where}: holds a {prep.recipe!r} transform, but this run needs "
                                            f"{recipe!r} ({needed})")
    if tuple(prep.image_shape) != tuple(image_shape):
        raise preprocess.PreprocessingError(f"{where}: fitted on images of shape {tuple(prep.image_shape)}, but "
                                            f"data.dataset {data_cfg.dataset!r} has {tuple(image_shape)}")
    origin = prep.fitted_on or {}
    if not origin:
        logging.warning("%s records no dataset it was fitted on; used as %s's %r transform unchecked",
                        where, data_cfg.dataset, recipe)
    elif origin.get("dataset") != data_cfg.dataset or origin.get("split", "train") != "train":
        raise preprocess.PreprocessingError(f"{where}: fitted on dataset {origin.get('dataset')!r} split "
                                            f"{origin.get('split')!r}, but this run needs data.dataset "
                                            f"{data_cfg.dataset!r} split 'train'")
    elif train_images_uint8 is not None and origin.get("images_sha256") and (
            origin["images_sha256"] != fitted_on(data_cfg.dataset, train_images_uint8)["images_sha256"]):
        raise preprocess.PreprocessingError(f"{where}: fitted on other images than the training split of "
                                            f"data.dataset {data_cfg.dataset!r} found here (sha256 differs)")
    return prep


def load_training_data(data_cfg) -> TrainingData:
    """Builds the arrays a run trains and evaluates on, as `data_cfg` (config.data) says.

    With `data.preprocessing_path` the fitted transform is read from that file instead of being
    fitted on the real training split, and a distilled set's run then never loads that split (a
    machine can carry the test split and the transform without it).
    """
    datasets.check_dataset_name(data_cfg.dataset, "config field 'data.dataset'")
    use_saved = bool(data_cfg.get("preprocessing_path"))
    real_train = None
    if data_cfg.source == "real" or not use_saved:
        real_train = _real_split(data_cfg.dataset, "train", data_cfg.data_dir)
    real_test = _real_split(data_cfg.dataset, data_cfg.test_split, data_cfg.data_dir)
    num_classes = (real_train if real_train is not None else real_test).info.num_classes
    image_shape = tuple(real_test.images.shape[1:])

    def transform(recipe):
        if use_saved:
            return saved_preprocessing(data_cfg, recipe, image_shape,
                                       real_train.images if real_train is not None else None)
        return fitted_preprocessing(recipe, real_train.images, dataset=data_cfg.dataset)

    if data_cfg.source == "real":
        recipe = "standardize" if data_cfg.preprocessing == "auto" else data_cfg.preprocessing
        subset = real_train
        if data_cfg.per_class:
            try:
                subset = datasets.class_balanced_subset(real_train, per_class=data_cfg.per_class,
                                                        seed=data_cfg.subset_seed)
            except datasets.SubsetError as err:
                raise DataConfigError(f"config field 'data.per_class' = {data_cfg.per_class!r} with data.dataset "
                                      f"{data_cfg.dataset!r}: {err}") from None
        prep = transform(recipe)
        train_images = prep.apply(datasets.to_float(subset.images))
        train_labels = subset.labels.astype(np.int64)
        what = f"{data_cfg.dataset} real subset, {data_cfg.per_class or 'all'} per class"
        sha256 = {}
    else:
        kwargs = {"format": data_cfg.distilled_format} if data_cfg.distilled_format else {}
        dset = distilled.load_distilled(data_cfg.distilled_path, **kwargs)
        recipe = dset.preprocessing if data_cfg.preprocessing == "auto" else data_cfg.preprocessing
        check_claimed_dataset(dset)
        check_set_fits(dset, data_cfg.dataset, image_shape, num_classes, field="config field 'data.dataset'",
                       where=f"data.distilled_path = {str(data_cfg.distilled_path)!r}")
        prep = transform(recipe)
        train_images = np.asarray(dset.images, np.float32)
        labels = np.asarray(dset.labels)
        train_labels = (
            np.asarray(losses.label_temperature(labels, data_cfg.label_temperature), np.float32)
            if labels.ndim == 2
            else labels.astype(np.int64)
        )
        what = f"distilled set {data_cfg.distilled_path} ({dset.provenance.get('format', '?')})"
        sha256 = dict(dset.provenance.get("sha256") or {})
    test_images = prep.apply(datasets.to_float(real_test.images))
    logging.info("data: %s; %d training images, %d test images, preprocessing %s%s",
                 what, len(train_images), len(test_images), recipe,
                 f" (saved: {data_cfg.preprocessing_path})" if use_saved else "")
    return TrainingData(np.asarray(train_images, np.float32), train_labels, np.asarray(test_images, np.float32),
                        real_test.labels.astype(np.int64), num_classes, prep, what, sha256)
