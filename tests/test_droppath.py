"""DropPath arithmetic (docs/method.md §2.1, §2.2) against numpy references."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.models.droppath import check_keep_rate, residual_droppath, sample_keep_mask, virtual_shortcut_mix


def test_keep_mask_is_per_sample_bernoulli():
    mask = sample_keep_mask(jax.random.key(0), 20000, 0.3)
    chex.assert_shape(mask, (20000,))
    assert mask.dtype == jnp.float32
    assert set(np.unique(np.asarray(mask))) == {0.0, 1.0}
    assert abs(float(mask.mean()) - 0.3) < 0.02  # std of the mean is 0.0032


def test_keep_mask_extremes_and_traced_rate():
    draw = jax.jit(lambda key, p: sample_keep_mask(key, 64, p))
    np.testing.assert_array_equal(draw(jax.random.key(1), jnp.float32(0.0)), np.zeros(64))
    np.testing.assert_array_equal(draw(jax.random.key(1), jnp.float32(1.0)), np.ones(64))


def test_residual_droppath_matches_numpy():
    rng = np.random.default_rng(0)
    shortcut, branch = rng.normal(size=(2, 3, 2, 2, 4)).astype(np.float32)
    mask = np.array([1.0, 0.0, 1.0], np.float32)
    expected = shortcut + branch * mask[:, None, None, None] / 0.8
    np.testing.assert_allclose(residual_droppath(shortcut, branch, mask, 0.8), expected, rtol=1e-6)


def test_residual_droppath_expectation_is_eval_output():
    rng = np.random.default_rng(1)
    shortcut, branch = rng.normal(size=(2, 4, 3, 3, 2)).astype(np.float32)
    masks = jax.vmap(lambda k: sample_keep_mask(k, 4, 0.6))(jax.random.split(jax.random.key(2), 4000))
    outs = jax.vmap(lambda m: residual_droppath(shortcut, branch, m, 0.6))(masks)
    sigma = np.abs(branch) * np.sqrt(0.4 / 0.6 / 4000)  # std of the mean of branch * (m / p - 1)
    assert np.all(np.abs(np.asarray(outs.mean(0)) - (shortcut + branch)) <= 5 * sigma + 1e-5)


def test_residual_droppath_keep_rate_zero_gives_shortcut_without_nan():
    shortcut, branch = jnp.ones((2, 2, 2, 1)), jnp.full((2, 2, 2, 1), 3.0)
    np.testing.assert_array_equal(residual_droppath(shortcut, branch, jnp.zeros(2), 0.0), shortcut)


def test_virtual_shortcut_mix_matches_numpy():
    rng = np.random.default_rng(3)
    main, shortcut = rng.normal(size=(2, 3, 2, 2, 4)).astype(np.float32)
    mask = np.array([0.0, 1.0, 0.0], np.float32)
    expected = np.stack([shortcut[0], main[1], shortcut[2]])  # no 1/p scaling
    np.testing.assert_array_equal(virtual_shortcut_mix(main, shortcut, mask), expected)


@pytest.mark.parametrize("keep_rate", [1.5, -0.1])
def test_keep_rate_out_of_range_is_rejected(keep_rate):
    with pytest.raises(ValueError, match="keep_rate must be in"):
        sample_keep_mask(jax.random.key(0), 4, keep_rate)


def test_keep_rate_that_is_not_a_scalar_is_rejected():
    with pytest.raises(ValueError, match="keep_rate must be a scalar"):
        check_keep_rate(np.ones(3))
