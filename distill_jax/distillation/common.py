"""What both distillers share: penultimate features, real data on the device, initial
images, sampling inside a jitted step, and the image grid written at every checkpoint.

The real training split is preprocessed once, sorted by class and kept as one array, so
that a jitted step can draw its real batch itself (an index draw from the step's key):
the step stays a pure function of (state, real data, key), and a resumed run draws the
same batches as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.data import datasets, preprocess
from distill_jax.errors import UserError

METHODS = ("dm", "frepo")
DEFAULT_MODEL = {"dm": "convnet", "frepo": "convnet_frepo"}  # the network each method distils with
INITS = ("real", "noise")  # how the synthetic images start: real images of the class, or noise


class DistillationError(UserError, ValueError):
    """Bad input to a distiller: the message names what was given and what was expected."""


# --------------------------------------------------------------------------- features


def features_and_logits(model: nn.Module, variables: dict, images: jax.Array, *, train: bool):
    """(penultimate features (B, D), logits (B, K), batch_stats updates) of `model` on `images`.

    The features are the input of the network's final dense layer, the submodule named
    'head' (ConvNet, ConvNet-FRePo): DM matches their class means, FRePo regresses on them.
    They are taken by intercepting the head's call, so the networks need no extra method.
    With `train=True`, batch norm uses the statistics of this batch; its running-average
    updates are returned (empty for networks without batch norm) and callers decide
    whether to keep them.
    """
    captured = []

    def grab_head_input(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.name == "head":
            captured.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab_head_input):
        if train:
            logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        else:
            logits, updates = model.apply(variables, images, train=False), {}
    if not captured:
        raise DistillationError(f"features_and_logits: network {type(model).__name__} has no submodule named "
                                "'head' whose input could serve as the feature vector")
    features = captured[-1]
    return features.reshape(features.shape[0], -1), logits, updates


# --------------------------------------------------------------------------- real data


@dataclasses.dataclass(frozen=True, eq=False)
class RealData:
    """A real training split, preprocessed, sorted by class (stable), with class boundaries."""

    images: np.ndarray        # float32 (N, H, W, C) in the distiller's pixel space
    labels: np.ndarray        # int64 (N,), non-decreasing
    class_start: np.ndarray   # int32 (num_classes,): first index of each class
    class_count: np.ndarray   # int32 (num_classes,): images of each class
    num_classes: int
    preprocessing: preprocess.Preprocessing
    description: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])


def real_data_from_arrays(images: np.ndarray, labels: np.ndarray, num_classes: int,
                          preprocessing: preprocess.Preprocessing, description: str) -> RealData:
    """Sorts preprocessed images by class; every class must have at least one image."""
    labels = np.asarray(labels, np.int64)
    if images.ndim != 4 or len(images) != len(labels):
        raise DistillationError(f"real data ({description}): expected images (N, H, W, C) and labels (N,), got "
                                f"{images.shape} and {labels.shape}")
    count = np.bincount(labels, minlength=num_classes)
    if len(count) > num_classes or np.any(count == 0):
        raise DistillationError(f"real data ({description}): every class in [0, {num_classes}) needs images; "
                                f"counts per class {count.tolist()}")
    order = np.argsort(labels, kind="stable")
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    return RealData(np.ascontiguousarray(images[order], np.float32), labels[order], start.astype(np.int32),
                    count.astype(np.int32), int(num_classes), preprocessing, description)


def load_real_data(dataset: str, data_dir: str, recipe: str) -> RealData:
    """The whole training split of `dataset`, with `recipe` fitted on it and applied."""
    split = datasets.load_dataset(dataset, "train", data_dir=data_dir or None)
    pixels = datasets.to_float(split.images)
    prep = preprocess.fit(recipe, pixels)
    chunk = 4096  # bounds the float64 temporaries of the ZCA product
    images = np.concatenate([prep.apply(pixels[i:i + chunk]) for i in range(0, len(pixels), chunk)])
    return real_data_from_arrays(images, split.labels, split.info.num_classes, prep,
                                 f"{dataset} train split, {len(pixels)} images, preprocessing {recipe}")


def initial_images(real: RealData, ipc: int, init: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (num_classes * ipc, H, W, C), class indices) grouped by class.

    'real': `ipc` distinct real images of each class, drawn by `default_rng((seed, class))`
    (the distillers' usual start); 'noise': standard normal pixels in the distiller's space.
    """
    labels = np.repeat(np.arange(real.num_classes, dtype=np.int64), ipc)
    if init == "noise":
        rng = np.random.default_rng((seed, real.num_classes))
        return rng.standard_normal((len(labels),) + real.image_shape).astype(np.float32), labels
    if init != "real":
        raise DistillationError(f"initial_images: init must be 'real' or 'noise', got {init!r}")
    short = [c for c in range(real.num_classes) if real.class_count[c] < ipc]
    if short:
        raise DistillationError(f"initial_images: distill.ipc = {ipc} but class(es) {short} of {real.description} "
                                f"have only {real.class_count[short].tolist()} images; lower distill.ipc or use "
                                "distill.init = 'noise'")
    picks = [real.class_start[c] + np.random.default_rng((seed, c)).choice(real.class_count[c], ipc, replace=False)
             for c in range(real.num_classes)]
    return real.images[np.concatenate(picks)].copy(), labels


def sample_per_class(key: jax.Array, class_start: jax.Array, class_count: jax.Array, per_class: int) -> jax.Array:
    """Indices (num_classes, per_class) into the class-sorted real array, uniform within each
    class, with replacement (so classes of any size share one fixed-shape draw)."""
    u = jax.random.uniform(key, (class_start.shape[0], per_class))
    offset = jnp.floor(u * class_count[:, None]).astype(jnp.int32)
    return class_start[:, None] + jnp.minimum(offset, class_count[:, None] - 1)


def centred_one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
    """One-hot minus 1/K: targets of zero mean, FRePo's regression targets and label init."""
    return jax.nn.one_hot(labels, num_classes) - 1.0 / num_classes


def tree_index(tree: Any, index) -> Any:
    """Member `index` of a pytree stacked on its leading axis (index may be traced)."""
    return jax.tree.map(lambda x: x[index], tree)


def tree_set(tree: Any, index, member: Any) -> Any:
    """`tree` with member `index` replaced by `member` (a functional update)."""
    return jax.tree.map(lambda x, m: x.at[index].set(m), tree, member)


def optional(value, default):
    """`value` unless it is None."""
    return default if value is None else value


__all__ = ["DistillationError", "RealData", "centred_one_hot", "features_and_logits",
           "initial_images", "load_real_data", "real_data_from_arrays", "sample_per_class",
           "tree_index", "tree_set", "optional"]
