"""Distribution matching (DM, Zhao & Bilen, WACV 2023) as one pure step.

Every step draws a fresh randomly initialised network (its weights are never trained:
DM matches distributions under *random* embeddings). For each class, a batch of real
images and the class's synthetic images go through the same DSA transformation (siamese:
one draw per class shared by both batches, which may differ in size), and the loss is the
squared distance between their mean penultimate embeddings, summed over classes. Only the
synthetic images are learnt; their labels stay the class indices.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from distill_jax.data import augment
from distill_jax.distillation.common import features_and_logits, sample_per_class


@dataclasses.dataclass(frozen=True)
class DMSettings:
    """Static settings of a DM step (hashable: a jitted step is built once per settings)."""

    num_classes: int
    ipc: int
    real_per_class: int = 256
    augment_ops: tuple[str, ...] = augment.DSA_OPS
    augment_k: int = 1


def dm_loss(real_embeddings: jax.Array, synthetic_embeddings: jax.Array) -> jax.Array:
    """sum_c || mean_i real[c, i] - mean_j synthetic[c, j] ||^2 for (C, R, D) and (C, S, D) inputs."""
    difference = real_embeddings.mean(axis=1) - synthetic_embeddings.mean(axis=1)
    return jnp.sum(difference**2)


def make_dm_optimizer(learning_rate: float, momentum: float) -> optax.GradientTransformation:
    """DM's image optimiser: SGD with momentum (the reference uses lr 1.0, momentum 0.5)."""
    return optax.sgd(learning_rate, momentum=momentum)


def init_dm_state(images: jax.Array, optimizer: optax.GradientTransformation) -> dict:
    """{images, opt_state, step}: everything a DM run needs to continue exactly."""
    images = jnp.asarray(images, jnp.float32)
    return {"images": images, "opt_state": optimizer.init(images), "step": jnp.zeros((), jnp.int32)}


def siamese_per_class(keys: jax.Array, real: jax.Array, synthetic: jax.Array, ops: tuple[str, ...], k: int):
    """Augments class c's real (C, R, ...) and synthetic (C, S, ...) batches with one shared draw from keys[c]."""
    if k == 0:
        return real, synthetic
    pair = lambda key, r, s: augment.augment_siamese(key, r, s, ops=ops, k=k, per_sample=False)  # noqa: E731
    return jax.vmap(pair)(keys, real, synthetic)


def make_dm_step(model: nn.Module, optimizer: optax.GradientTransformation, settings: DMSettings):
    """Builds `dm_step(state, real, key) -> (state, metrics)`, a pure function (jit it).

    `real` = {"images": class-sorted (N, H, W, C), "class_start", "class_count"} (see
    `common.RealData`); `key` is the run's base key: the step folds in its own counter, so
    the network, the real batch and the augmentation of step t depend only on (key, t).
    """
    num_classes, ipc = settings.num_classes, settings.ipc

    def embed(variables, batches):
        leading = batches.shape[:2]
        flat = batches.reshape((-1,) + batches.shape[2:])
        features, _, _ = features_and_logits(model, variables, flat, train=True)
        return features.reshape(leading + features.shape[1:])

    def dm_step(state, real, key):
        init_key, real_key, augment_key = jax.random.split(jax.random.fold_in(key, state["step"]), 3)
        images = state["images"]
        variables = model.init({"params": init_key}, images[:1], train=False)
        index = sample_per_class(real_key, real["class_start"], real["class_count"], settings.real_per_class)
        real_batches = real["images"][index]  # (C, R, H, W, ch)
        class_keys = jax.random.split(augment_key, num_classes)

        def loss_fn(images):
            synthetic = images.reshape((num_classes, ipc) + images.shape[1:])
            real_aug, synthetic_aug = siamese_per_class(class_keys, real_batches, synthetic, settings.augment_ops,
                                                        settings.augment_k)
            return dm_loss(jax.lax.stop_gradient(embed(variables, real_aug)), embed(variables, synthetic_aug))

        loss, grads = jax.value_and_grad(loss_fn)(images)
        updates, opt_state = optimizer.update(grads, state["opt_state"], images)
        new_state = {"images": optax.apply_updates(images, updates), "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return dm_step
