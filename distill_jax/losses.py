"""Losses and accuracy for training on distilled data (docs/method.md §2.5, §2.6).

Every function is a pure jnp function reducing over the batch by its mean, so
losses stay comparable across batch sizes. All log-probabilities come from
``jax.nn.log_softmax`` (never ``log(softmax(.))``), which keeps large logits
finite.

Shapes: ``logits`` is ``(batch, classes)`` (any leading batch dims are
accepted as long as the class axis is last); integer labels have the same
shape without the class axis; probability targets have the same shape as the
logits.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

__all__ = [
    "cross_entropy",
    "soft_cross_entropy",
    "label_temperature",
    "kd_loss",
    "accuracy",
]


def _check_int_labels(logits: jax.Array, labels: jax.Array, where: str) -> None:
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"losses.py {where}: integer labels must have shape {logits.shape[:-1]} "
            f"(logits shape without the class axis), got {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"losses.py {where}: class-index labels must be integers, got dtype {labels.dtype}"
        )


def _check_prob_targets(logits: jax.Array, targets: jax.Array, where: str) -> None:
    if targets.shape != logits.shape:
        raise ValueError(
            f"losses.py {where}: probability targets must have the logits' shape "
            f"{logits.shape}, got {targets.shape}"
        )


def _check_positive(value, name: str, where: str) -> None:
    # Only concrete Python numbers can be checked; traced values pass through.
    if isinstance(value, numbers.Real) and not value > 0:
        raise ValueError(f"losses.py {where}: {name} must be > 0, got {value}")


def cross_entropy(logits: jax.Array, labels_int: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of integer class labels."""
    logits = jnp.asarray(logits)
    labels_int = jnp.asarray(labels_int)
    _check_int_labels(logits, labels_int, "cross_entropy")
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, labels_int[..., None], axis=-1)[..., 0]
    return -jnp.mean(picked)


def soft_cross_entropy(logits: jax.Array, target_probs: jax.Array) -> jax.Array:
    """Cross-entropy against a probability vector per example (soft labels).

    Summed over classes, averaged over the batch; equals ``cross_entropy`` when
    the targets are one-hot.
    """
    logits = jnp.asarray(logits)
    target_probs = jnp.asarray(target_probs)
    _check_prob_targets(logits, target_probs, "soft_cross_entropy")
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.sum(target_probs * log_probs, axis=-1))


def label_temperature(label_vectors: jax.Array, tau: float = 0.3) -> jax.Array:
    """Turn learned (FRePo) label vectors into soft targets ``softmax(y / tau)``.

    FRePo learns unnormalised label vectors; a low temperature sharpens them
    into a distribution close to the intended class (docs/method.md §2.6).
    """
    _check_positive(tau, "tau", "label_temperature")
    return jax.nn.softmax(jnp.asarray(label_vectors) / tau, axis=-1)


def kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    targets: jax.Array,
    alpha: float = 0.5,
    temperature: float = 1.5,
) -> jax.Array:
    """Knowledge-distillation loss of docs/method.md §2.5.

    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``,
    KL summed over classes and averaged over the batch. ``T^2`` keeps the soft
    term's gradient scale independent of the temperature. The teacher is a
    fixed reference, so its gradient is stopped here. ``targets`` are class
    indices (one dim fewer than the logits) or probability vectors (same shape
    as the logits, e.g. ``label_temperature`` of learned labels).
    """
    if isinstance(alpha, numbers.Real) and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"losses.py kd_loss: alpha must be in [0, 1], got {alpha}")
    _check_positive(temperature, "temperature", "kd_loss")
    student_logits = jnp.asarray(student_logits)
    teacher_logits = jax.lax.stop_gradient(jnp.asarray(teacher_logits))
    targets = jnp.asarray(targets)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"losses.py kd_loss: teacher_logits must have the student's shape "
            f"{student_logits.shape}, got {teacher_logits.shape}"
        )

    log_p_teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_p_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    p_teacher = jnp.exp(log_p_teacher)
    # p * (log p - log q) with the 0 * log 0 = 0 convention, so a teacher class
    # whose probability underflows contributes nothing instead of NaN.
    kl_terms = jnp.where(p_teacher > 0, p_teacher * (log_p_teacher - log_p_student), 0.0)
    kl = jnp.mean(jnp.sum(kl_terms, axis=-1))

    if targets.ndim == student_logits.ndim - 1:
        hard = cross_entropy(student_logits, targets)
    elif targets.ndim == student_logits.ndim:
        hard = soft_cross_entropy(student_logits, targets)
    else:
        raise ValueError(
            f"losses.py kd_loss: targets must be class indices of shape {student_logits.shape[:-1]} "
            f"or probabilities of shape {student_logits.shape}, got shape {targets.shape}"
        )
    return alpha * temperature**2 * kl + (1.0 - alpha) * hard


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose arg-max logit is the label.

    ``labels`` are class indices or label vectors (one-hot, soft or learned),
    in which case their arg-max is the class.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if labels.ndim == logits.ndim:
        if labels.shape != logits.shape:
            raise ValueError(
                f"losses.py accuracy: label vectors must have the logits' shape {logits.shape}, "
                f"got {labels.shape}"
            )
        labels = jnp.argmax(labels, axis=-1)
    elif labels.ndim == logits.ndim - 1:
        _check_int_labels(logits, labels, "accuracy")
    else:
        raise ValueError(
            f"losses.py accuracy: labels must have shape {logits.shape[:-1]} (indices) or "
            f"{logits.shape} (vectors), got {labels.shape}"
        )
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
