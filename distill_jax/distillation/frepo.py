"""FRePo (Zhou, Nezhadarya & Ba, NeurIPS 2022): neural feature regression with a model pool.

The distilled images *and* their label vectors are the parameters. A pool of networks
(ConvNet-FRePo) is trained online on the distilled set, each re-initialised after a fixed
number of its own updates, so the meta-gradient sees features from networks at every
stage of training without unrolling any of it. The meta-loss of one step:

* take one pool member's penultimate features f of the distilled images (support s)
  and of a real batch (target t);
* kernel ridge regression with the kernel K = f f^T:
  ``pred_t = K_ts (K_ss + lambda I)^{-1} y_s`` with ``lambda = reg * trace(K_ss) / n_s``
  (a regulariser relative to the kernel's scale), solved through a Cholesky factorisation;
* loss = mean squared error of ``pred_t`` against the real batch's centred one-hot labels.

Then the chosen member takes one optimiser step on the (augmented) distilled set with an
MSE loss on its outputs, and is re-initialised once it has taken `max_online_updates`.
With `flip_double` (FRePo's choice at 1 image per class) the support set is the images
plus their horizontal mirror images, with the same labels.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from distill_jax.data import augment
from distill_jax.distillation.common import centred_one_hot, features_and_logits, tree_index, tree_set

META_OPTIMIZERS = ("lamb", "adam")  # the optimisers of the distilled images (FRePo uses LAMB)


@dataclasses.dataclass(frozen=True)
class FRePoSettings:
    """Static settings of a FRePo step (hashable: a jitted step is built once per settings)."""

    num_classes: int
    real_batch_size: int = 1024
    pool_size: int = 10
    max_online_updates: int = 100
    kernel_reg: float = 1e-6
    flip_double: bool = False
    learn_labels: bool = True
    augment_ops: tuple[str, ...] = augment.DSA_OPS
    augment_k: int = 1


# --------------------------------------------------------------------------- kernel ridge regression


def krr_predict(support_features: jax.Array, support_labels: jax.Array, target_features: jax.Array,
                reg: float) -> jax.Array:
    """Kernel ridge regression predictions for the targets, (T, K).

    ``K_ts (K_ss + reg * trace(K_ss) / n * I)^{-1} y_s`` with linear kernels on the features;
    the system is symmetric positive definite, so it is solved by Cholesky (stable, and
    cheaper than forming an inverse).
    """
    k_ss = support_features @ support_features.T
    k_ts = target_features @ support_features.T
    n = k_ss.shape[0]
    regularised = k_ss + (reg * jnp.trace(k_ss) / n) * jnp.eye(n, dtype=k_ss.dtype)
    factor = jax.scipy.linalg.cho_factor(regularised, lower=True)
    return k_ts @ jax.scipy.linalg.cho_solve(factor, support_labels)


def krr_loss(support_features, support_labels, target_features, target_labels, reg: float) -> jax.Array:
    """Mean squared error of the KRR predictions against the targets' labels."""
    prediction = krr_predict(support_features, support_labels, target_features, reg)
    return jnp.mean((prediction - target_labels) ** 2)


def flip_doubled(images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The images followed by their mirror images (width axis), labels repeated."""
    return jnp.concatenate([images, images[:, :, ::-1, :]]), jnp.concatenate([labels, labels])


# --------------------------------------------------------------------------- state


def make_label_image_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """Optimiser of the distilled images and labels: FRePo's LAMB (lr 3e-4) or Adam."""
    if name == "lamb":
        return optax.lamb(learning_rate)
    if name == "adam":
        return optax.adam(learning_rate)
    raise ValueError(f"frepo.py: optimizer must be one of {META_OPTIMIZERS}, got {name!r}")


def make_online_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Optimiser of the pool members: Adam (FRePo: lr 3e-4)."""
    return optax.adam(learning_rate)


def init_member(model: nn.Module, online_optimizer: optax.GradientTransformation, key: jax.Array,
                sample_images: jax.Array) -> dict:
    """A freshly initialised pool member: {params, batch_stats, opt_state, updates}."""
    variables = model.init({"params": key}, sample_images, train=False)
    params = variables["params"]
    return {"params": params, "batch_stats": variables.get("batch_stats", {}),
            "opt_state": online_optimizer.init(params), "updates": jnp.zeros((), jnp.int32)}


def init_frepo_state(model: nn.Module, optimizer: optax.GradientTransformation,
                     online_optimizer: optax.GradientTransformation, settings: FRePoSettings,
                     images: jax.Array, labels: jax.Array, key: jax.Array) -> dict:
    """{images, labels, opt_state, pool, step}.

    `labels` are the initial label vectors (N, K), e.g. centred one-hot. The pool members'
    update counters start staggered over [0, max_online_updates) so that their
    re-initialisations spread out instead of coinciding.
    """
    images = jnp.asarray(images, jnp.float32)
    labels = jnp.asarray(labels, jnp.float32)
    distilled = {"images": images, "labels": labels}
    keys = jax.random.split(key, settings.pool_size)
    pool = jax.vmap(lambda k: init_member(model, online_optimizer, k, images[:1]))(keys)
    pool["updates"] = (jnp.arange(settings.pool_size, dtype=jnp.int32) * settings.max_online_updates
                       // settings.pool_size)
    return {**distilled, "opt_state": optimizer.init(distilled), "pool": pool, "step": jnp.zeros((), jnp.int32)}


# --------------------------------------------------------------------------- the step


def meta_loss(model: nn.Module, member: dict, images: jax.Array, labels: jax.Array, target_images: jax.Array,
              target_labels: jax.Array, settings: FRePoSettings) -> jax.Array:
    """FRePo's meta-loss of the distilled (images, labels) under one pool member.

    Support and target go through the network in one batch, so that batch norm normalises
    both with the same statistics (those of the batch; the member's running averages are
    left alone).
    """
    if settings.flip_double:
        images, labels = flip_doubled(images, labels)
    variables = {"params": member["params"], "batch_stats": member["batch_stats"]}
    features, _, _ = features_and_logits(model, variables, jnp.concatenate([images, target_images]), train=True)
    n = images.shape[0]
    return krr_loss(features[:n], labels, features[n:], target_labels, settings.kernel_reg)


def make_frepo_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    online_optimizer: optax.GradientTransformation, settings: FRePoSettings):
    """Builds `frepo_step(state, real, key) -> (state, metrics)`, a pure function (jit it).

    `real` = {"images": (N, H, W, C), "labels": int (N,)}; `key` is the run's base key, into
    which the step folds its counter (so step t depends only on (state, key, t)).
    """

    def online_update(member, images, labels, augment_key):
        if settings.flip_double:
            images, labels = flip_doubled(images, labels)
        if settings.augment_k:
            images = augment.augment(augment_key, images, ops=settings.augment_ops, k=settings.augment_k)

        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": member["batch_stats"]}, images,
                                          train=True, mutable=["batch_stats"])
            return jnp.mean(jnp.sum((logits - labels) ** 2, axis=-1)), updates

        (_, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(member["params"])
        param_updates, opt_state = online_optimizer.update(grads, member["opt_state"], member["params"])
        return {"params": optax.apply_updates(member["params"], param_updates),
                "batch_stats": updates.get("batch_stats", member["batch_stats"]),
                "opt_state": opt_state, "updates": member["updates"] + 1}

    def frepo_step(state, real, key):
        pick_key, real_key, augment_key, reinit_key = jax.random.split(jax.random.fold_in(key, state["step"]), 4)
        index = jax.random.randint(pick_key, (), 0, settings.pool_size)
        member = tree_index(state["pool"], index)
        batch = jax.random.randint(real_key, (settings.real_batch_size,), 0, real["images"].shape[0])
        target_images = real["images"][batch]
        target_labels = centred_one_hot(real["labels"][batch], settings.num_classes)

        distilled = {"images": state["images"], "labels": state["labels"]}
        loss, grads = jax.value_and_grad(
            lambda d: meta_loss(model, member, d["images"], d["labels"], target_images, target_labels, settings)
        )(distilled)
        if not settings.learn_labels:
            grads = {"images": grads["images"], "labels": jnp.zeros_like(grads["labels"])}
        updates, opt_state = optimizer.update(grads, state["opt_state"], distilled)
        distilled = optax.apply_updates(distilled, updates)

        trained = online_update(member, jax.lax.stop_gradient(distilled["images"]),
                                jax.lax.stop_gradient(distilled["labels"]), augment_key)
        trained = jax.lax.cond(trained["updates"] >= settings.max_online_updates,
                               lambda: init_member(model, online_optimizer, reinit_key, distilled["images"][:1]),
                               lambda: trained)
        new_state = {**distilled, "opt_state": opt_state, "pool": tree_set(state["pool"], index, trained),
                     "step": state["step"] + 1}
        metrics = {"loss": loss, "grad_norm_images": optax.tree.norm(grads["images"]),
                   "grad_norm_labels": optax.tree.norm(grads["labels"])}
        return new_state, metrics

    return frepo_step
