"""Pure train and eval steps.

State is a plain dict `{params, batch_stats, opt_state, step}` (big_vision style), so it
can be vmapped over seeds, sharded, and checkpointed as one pytree. Per-step randomness
comes from `fold_in(seed_rng, step)`, which makes a resumed run draw the same masks and
augmentations as an uninterrupted one. The keep rate is an ordinary traced argument:
moving along the three-phase schedule never recompiles the step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from distill_jax import losses

Batch = dict  # {"image": (B,H,W,C) float32, "label": (B,) int or (B,K) float probs[, "mask": (B,)]}
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class KDSettings:
    """Knowledge distillation from a frozen teacher (docs/method.md §2.5)."""

    teacher: nn.Module
    alpha: float = 0.5
    temperature: float = 1.5


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, rng: jax.Array,
               sample_images: jax.Array) -> dict:
    """Initialises one network and its optimiser state; vmap it over rngs for many seeds."""
    variables = model.init({"params": rng, "droppath": rng}, sample_images, train=False)
    params = variables["params"]
    return {
        "params": params,
        "batch_stats": variables.get("batch_stats", {}),
        "opt_state": optimizer.init(params),
        "step": jnp.zeros((), jnp.int32),
    }


def _variables(state_or_params, batch_stats):
    variables = {"params": state_or_params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    return variables


def _task_loss(logits, labels):
    if labels.ndim == 2:
        return losses.soft_cross_entropy(logits, labels)
    return losses.cross_entropy(logits, labels)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, *,
                    augment_fn: Optional[AugmentFn] = None,
                    kd: Optional[KDSettings] = None) -> Callable[..., Any]:
    """Builds `train_step(state, batch, rng, keep_rate, teacher_variables=None) -> (state, metrics)`.

    `rng` is the seed's base key; the step folds in its own counter. The teacher (if any)
    runs in inference mode on the same augmented images as the student.
    """

    def train_step(state, batch, rng, keep_rate, teacher_variables=None):
        step_rng = jax.random.fold_in(rng, state["step"])
        augment_rng, droppath_rng = jax.random.split(step_rng)
        images = batch["image"]
        if augment_fn is not None:
            images = augment_fn(augment_rng, images)
        labels = batch["label"]
        teacher_logits = None
        if kd is not None:
            teacher_logits = jax.lax.stop_gradient(kd.teacher.apply(teacher_variables, images, train=False))

        def loss_fn(params):
            logits, updates = model.apply(
                _variables(params, state["batch_stats"]), images, train=True, keep_rate=keep_rate,
                rngs={"droppath": droppath_rng}, mutable=["batch_stats", "intermediates"])
            if kd is not None:
                loss = losses.kd_loss(logits, teacher_logits, labels, alpha=kd.alpha, temperature=kd.temperature)
            else:
                loss = _task_loss(logits, labels)
            return loss, (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        param_updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {
            "params": optax.apply_updates(state["params"], param_updates),
            "batch_stats": updates.get("batch_stats", state["batch_stats"]),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        metrics = {"loss": loss, "accuracy": losses.accuracy(logits, labels)}
        used = jax.tree.leaves(updates.get("intermediates", {}))
        if used:  # the keep rate each DropPath block really applied (docs/method.md §2.4 defect check)
            metrics["keep_rate_used"] = jnp.mean(jnp.stack([jnp.mean(u) for u in used]))
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable[..., Any]:
    """Builds `eval_step(params, batch_stats, batch) -> sums` (correct, loss, count).

    Sums rather than means so that batches of any size, padded with `mask`, add up exactly.
    """

    def eval_step(params, batch_stats, batch):
        logits = model.apply(_variables(params, batch_stats), batch["image"], train=False)
        labels = batch["label"]
        mask = batch.get("mask", jnp.ones(labels.shape[0], jnp.float32))
        target = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
        correct = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
        log_probs = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(log_probs, target[:, None], axis=-1)[:, 0]
        return {"correct": jnp.sum(correct * mask), "loss": jnp.sum(nll * mask), "count": jnp.sum(mask)}

    return eval_step
