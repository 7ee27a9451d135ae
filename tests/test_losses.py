"""Losses against hand-worked examples and an independent numpy reference."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import losses

LN2, LN3 = math.log(2.0), math.log(3.0)


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _np_kd(student, teacher, targets, alpha, temperature):
    log_pt = _np_log_softmax(np.asarray(teacher) / temperature)
    log_ps = _np_log_softmax(np.asarray(student) / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1).mean()
    log_p = _np_log_softmax(student)
    targets = np.asarray(targets)
    if targets.ndim == 1:
        ce = -log_p[np.arange(len(targets)), targets].mean()
    else:
        ce = -(targets * log_p).sum(-1).mean()
    return alpha * temperature**2 * kl + (1 - alpha) * ce


# ----------------------------------------------------------------- cross-entropy


def test_cross_entropy_hand_values():
    # Row 1: 3 - log(e + e^2 + e^3) = -0.407606; row 2: uniform over 3 -> log 3.
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([2, 0])
    expected = (0.40760596444438013 + LN3) / 2
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-6)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = jnp.array([[1000.0, 0.0], [0.0, 1000.0]])
    value = losses.cross_entropy(logits, jnp.array([1, 1]))
    # Row 1 costs 1000 nats, row 2 costs ~0.
    np.testing.assert_allclose(value, 500.0, rtol=1e-6)
    assert np.isfinite(value)


def test_cross_entropy_rejects_label_shape():
    with pytest.raises(ValueError, match="losses.py cross_entropy.*shape"):
        losses.cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1, 2]))


def test_cross_entropy_rejects_float_labels():
    with pytest.raises(ValueError, match="integers"):
        losses.cross_entropy(jnp.zeros((2, 3)), jnp.array([0.0, 1.0]))


def test_soft_cross_entropy_hand_value():
    # softmax([0, ln 3]) = [1/4, 3/4]; target [1/2, 1/2]: -(ln(1/4) + ln(3/4)) / 2.
    logits = jnp.array([[0.0, LN3]])
    targets = jnp.array([[0.5, 0.5]])
    expected = -(math.log(0.25) + math.log(0.75)) / 2
    np.testing.assert_allclose(losses.soft_cross_entropy(logits, targets), expected, rtol=1e-6)


def test_soft_cross_entropy_equals_hard_with_one_hot():
    logits = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    labels = jnp.array([0, 3, 1, 2, 3])
    np.testing.assert_allclose(
        losses.soft_cross_entropy(logits, jax.nn.one_hot(labels, 4)),
        losses.cross_entropy(logits, labels),
        rtol=1e-6,
    )


def test_soft_cross_entropy_rejects_shape():
    with pytest.raises(ValueError, match="soft_cross_entropy.*shape"):
        losses.soft_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


# ----------------------------------------------------------------- label temperature


def test_label_temperature_hand_value():
    # y / 0.3 = [0, ln 3] -> [1/4, 3/4].
    y = jnp.array([[0.0, 0.3 * LN3]])
    chex.assert_trees_all_close(losses.label_temperature(y, tau=0.3), jnp.array([[0.25, 0.75]]), rtol=1e-6)


def test_label_temperature_default_tau_is_point_three():
    y = jnp.array([[0.2, -0.1, 0.5]])
    chex.assert_trees_all_close(losses.label_temperature(y), jax.nn.softmax(y / 0.3), rtol=1e-6)


def test_label_temperature_rejects_non_positive_tau():
    with pytest.raises(ValueError, match="tau must be > 0"):
        losses.label_temperature(jnp.ones((1, 2)), tau=0.0)


# ----------------------------------------------------------------- knowledge distillation


def test_kd_loss_hand_value_temperature_one():
    # Teacher softmax([ln 3, 0]) = [3/4, 1/4]; student uniform [1/2, 1/2].
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812; CE(student, 0) = ln 2.
    student = jnp.array([[0.0, 0.0]])
    teacher = jnp.array([[LN3, 0.0]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    expected = 0.5 * kl + 0.5 * LN2
    value = losses.kd_loss(student, teacher, jnp.array([0]), alpha=0.5, temperature=1.0)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(value, 0.41197960825054114, rtol=1e-6)


def test_kd_loss_hand_value_temperature_two():
    # Teacher softmax([ln3/2, 0]) = [a, 1-a] with a = sqrt3/(sqrt3+1); T^2 = 4 scales the KL.
    a = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = a * math.log(2 * a) + (1 - a) * math.log(2 * (1 - a))
    value = losses.kd_loss(jnp.zeros((1, 2)), jnp.array([[LN3, 0.0]]), jnp.array([0]), alpha=0.5, temperature=2.0)
    np.testing.assert_allclose(value, 0.5 * 4 * kl + 0.5 * LN2, rtol=1e-6)


@pytest.mark.parametrize("soft", [False, True])
def test_kd_loss_matches_numpy_reference(soft):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    student = 3 * jax.random.normal(k1, (6, 5))
    teacher = 3 * jax.random.normal(k2, (6, 5))
    if soft:
        targets = jax.nn.softmax(jax.random.normal(k3, (6, 5)))
    else:
        targets = jax.random.randint(k3, (6,), 0, 5)
    value = losses.kd_loss(student, teacher, targets, alpha=0.7, temperature=3.0)
    expected = _np_kd(student, teacher, targets, 0.7, 3.0)
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_kd_loss_defaults_are_spec_values():
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    student, teacher = jax.random.normal(k1, (4, 3)), jax.random.normal(k2, (4, 3))
    labels = jnp.array([0, 1, 2, 0])
    np.testing.assert_allclose(
        losses.kd_loss(student, teacher, labels), _np_kd(student, teacher, labels, 0.5, 1.5), rtol=1e-5
    )


def test_kd_kl_is_zero_when_logits_equal():
    logits = jax.random.normal(jax.random.PRNGKey(3), (4, 6))
    labels = jnp.array([1, 2, 3, 4])
    # alpha = 1 keeps only the KL term.
    np.testing.assert_allclose(losses.kd_loss(logits, logits, labels, alpha=1.0), 0.0, atol=1e-6)


def test_kd_alpha_zero_is_cross_entropy():
    k1, k2 = jax.random.split(jax.random.PRNGKey(4))
    student, teacher = jax.random.normal(k1, (4, 3)), jax.random.normal(k2, (4, 3))
    labels = jnp.array([2, 1, 0, 1])
    np.testing.assert_allclose(
        losses.kd_loss(student, teacher, labels, alpha=0.0), losses.cross_entropy(student, labels), rtol=1e-6
    )
    probs = jax.nn.softmax(teacher)
    np.testing.assert_allclose(
        losses.kd_loss(student, teacher, probs, alpha=0.0), losses.soft_cross_entropy(student, probs), rtol=1e-6
    )


def test_kd_gradient_wrt_teacher_is_zero_and_student_is_not():
    k1, k2 = jax.random.split(jax.random.PRNGKey(5))
    student, teacher = jax.random.normal(k1, (4, 3)), jax.random.normal(k2, (4, 3))
    labels = jnp.array([0, 1, 2, 0])
    g_student, g_teacher = jax.grad(losses.kd_loss, argnums=(0, 1))(student, teacher, labels)
    chex.assert_trees_all_equal(g_teacher, jnp.zeros_like(teacher))
    assert float(jnp.abs(g_student).sum()) > 1e-3


def test_kd_loss_finite_when_teacher_probability_underflows():
    student = jnp.array([[0.0, 0.0, 0.0]])
    teacher = jnp.array([[0.0, -1e4, -1e4]])  # teacher probs [1, 0, 0] in float32
    value = losses.kd_loss(student, teacher, jnp.array([0]), alpha=1.0, temperature=1.0)
    # KL(one-hot || uniform) = ln 3.
    np.testing.assert_allclose(value, LN3, rtol=1e-6)
    grad = jax.grad(losses.kd_loss)(student, teacher, jnp.array([0]), 1.0, 1.0)
    assert np.all(np.isfinite(grad))


def test_kd_loss_works_under_jit():
    student, teacher = jnp.zeros((1, 2)), jnp.array([[LN3, 0.0]])
    value = jax.jit(losses.kd_loss, static_argnames=("alpha", "temperature"))(
        student, teacher, jnp.array([0]), alpha=0.5, temperature=1.0
    )
    np.testing.assert_allclose(value, 0.41197960825054114, rtol=1e-6)


def test_kd_loss_rejects_target_rank():
    with pytest.raises(ValueError, match="kd_loss: targets must be"):
        losses.kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 3, 1)))


def test_kd_loss_rejects_teacher_shape():
    with pytest.raises(ValueError, match="teacher_logits"):
        losses.kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.array([0, 1]))


def test_kd_loss_rejects_alpha_out_of_range():
    with pytest.raises(ValueError, match="alpha must be in"):
        losses.kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.array([0, 1]), alpha=1.5)


def test_kd_loss_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.array([0, 1]), temperature=0.0)


# ----------------------------------------------------------------- accuracy


def test_accuracy_with_int_labels():
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    acc = losses.accuracy(logits, jnp.array([1, 0, 0, 0]))
    np.testing.assert_allclose(acc, 0.75)
    assert acc.dtype == jnp.float32


def test_accuracy_with_label_vectors():
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    vectors = jnp.array([[0.2, 1.3], [0.9, -0.5], [2.0, 0.1], [0.0, 0.4]])  # argmax 1, 0, 0, 1
    np.testing.assert_allclose(losses.accuracy(logits, vectors), 0.5)


def test_accuracy_rejects_label_shape():
    with pytest.raises(ValueError, match="accuracy"):
        losses.accuracy(jnp.zeros((4, 2)), jnp.zeros((4, 3)))


def test_accuracy_rejects_label_rank():
    with pytest.raises(ValueError, match="accuracy: labels must have shape"):
        losses.accuracy(jnp.zeros((4, 2)), jnp.zeros((4, 2, 1)))
