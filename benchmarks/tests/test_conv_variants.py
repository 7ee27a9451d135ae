"""benchmarks/conv_variants.py: the variants conv_cpu.py times give XLA's convolution and nn.Conv's
results, so that a timing compares equals."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import conv_variants
from conv_variants import Conv
from distill_jax.models import fast_conv

TOL = dict(rtol=1e-5, atol=2e-5)


def lax_conv(x, kernel, strides, pads):
    """Independent reference: XLA's convolution, NHWC/HWIO."""
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def output_and_grads(conv, x, kernel, strides, pads):
    """(output, (dL/dx, dL/dkernel)) for a non-linear scalar loss, jitted."""

    def loss(x_, k_):
        out = conv(x_, k_, strides, pads)
        return jnp.sum(jnp.sin(out)), out

    return jax.jit(lambda x_, k_: jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x_, k_))(x, kernel)


@pytest.mark.parametrize("strides, pads", [((2, 2), ((1, 1), (1, 1))), ((1, 2), ((0, 2), (1, 0)))])
def test_im2col_and_the_patches_kernel_gradient_equal_xla(strides, pads):
    x, kernel = normal((2, 7, 7, 3), 7), normal((3, 3, 3, 4), 8) / np.sqrt(27)
    want = output_and_grads(lax_conv, x, kernel, strides, pads)
    chex.assert_trees_all_close(output_and_grads(conv_variants.im2col_conv2d, x, kernel, strides, pads), want, **TOL)
    by_patches = fast_conv.make_conv2d(conv_variants.kernel_grad_by_patches)
    chex.assert_trees_all_close(output_and_grads(by_patches, x, kernel, strides, pads), want, **TOL)


MODULE_CASES = [
    dict(features=4, kernel_size=(3, 3)),
    dict(features=4, kernel_size=(3, 3), strides=2, use_bias=False),
    dict(features=4, kernel_size=(1, 1), strides=(2, 2), padding="VALID"),
    dict(features=4, kernel_size=(5, 5), padding=2),
    dict(features=4, kernel_size=(3, 3), padding="CIRCULAR"),
    dict(features=4, kernel_size=(3, 3), padding="REFLECT", bias_init=nn.initializers.normal(1.0)),
]


@pytest.mark.parametrize("kwargs", MODULE_CASES)
def test_module_is_drop_in_for_nn_conv(kwargs):
    x = normal((2, 8, 8, 3), 10)
    ours, theirs = Conv(**kwargs), nn.Conv(**kwargs)
    params = theirs.init(jax.random.PRNGKey(11), x)
    chex.assert_trees_all_equal(ours.init(jax.random.PRNGKey(11), x), params)  # same initialisers, same draws

    def value_and_grads(module):
        loss = lambda p, x_: jnp.sum(jnp.sin(module.apply(p, x_)))  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

    chex.assert_trees_all_close(value_and_grads(ours), value_and_grads(theirs), **TOL)


def test_module_int_kernel_size_is_square_and_extra_batch_axes_are_kept():
    x = normal((2, 3, 6, 6, 2), 12)
    ours, theirs = Conv(5, kernel_size=3), nn.Conv(5, kernel_size=(3, 3))
    params = ours.init(jax.random.PRNGKey(13), x)
    assert params["params"]["kernel"].shape == (3, 3, 2, 5)
    out = ours.apply(params, x)
    chex.assert_shape(out, (2, 3, 6, 6, 5))
    chex.assert_trees_all_close(out, theirs.apply(params, x), **TOL)
    chex.assert_trees_all_close(ours.apply(params, x[0, 0]), theirs.apply(params, x[0, 0]), **TOL)


def test_module_bfloat16_computation_keeps_float32_params():
    x = normal((2, 6, 6, 3), 14)
    module = Conv(4, (3, 3), dtype=jnp.bfloat16)
    params = module.init(jax.random.PRNGKey(15), x)
    assert params["params"]["kernel"].dtype == jnp.float32
    out = module.apply(params, x)
    assert out.dtype == jnp.bfloat16
    reference = nn.Conv(4, (3, 3)).apply(params, x)
    chex.assert_trees_all_close(out.astype(jnp.float32), reference, rtol=3e-2, atol=3e-2)
    grads = jax.grad(lambda p: module.apply(p, x).astype(jnp.float32).sum())(params)
    assert grads["params"]["kernel"].dtype == jnp.float32


def test_bad_kernel_size_raises():
    with pytest.raises(ValueError, match="conv_variants.py: kernel_size must be"):
        Conv(4, kernel_size=(3, 3, 3)).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))


def test_module_rejects_input_without_spatial_axes():
    with pytest.raises(ValueError, match="conv_variants.py: Conv expects inputs"):
        Conv(4, kernel_size=3).init(jax.random.PRNGKey(0), jnp.zeros((4, 1)))
