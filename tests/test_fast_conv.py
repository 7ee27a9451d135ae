"""fast_conv: outputs and gradients equal XLA's convolution, under jit and vmap."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from distill_jax.models import fast_conv
from distill_jax.models.fast_conv import conv2d, explicit_padding, kernel_grad_by_taps

TOL = dict(rtol=1e-5, atol=2e-5)


def lax_conv(x, kernel, strides, padding):
    """Independent reference: XLA's convolution with Flax's conventions."""
    strides = (strides, strides) if isinstance(strides, int) else strides
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def numpy_conv(x, kernel, stride, pad):
    """Direct sum over taps in float64, zero padding `pad` on every side."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kernel = np.asarray(kernel, np.float64)
    kh, kw = kernel.shape[:2]
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            window = x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]
            out += window @ kernel[i, j]
    return out


def normal(shape, seed):
    """Test data from numpy: jax.random compiles slowly on CPU, and the values need not come from JAX."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def random_pair(shape, kernel_shape, seed=0):
    return normal(shape, seed), normal(kernel_shape, seed + 100) / np.sqrt(np.prod(kernel_shape[:3]))


def output_and_grads(conv, x, kernel, strides, padding):
    """(output, (dL/dx, dL/dkernel)) for a non-linear scalar loss, in one compiled call."""

    def loss(x_, k_):
        out = conv(x_, k_, strides, padding)
        return jnp.sum(jnp.sin(out)), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, kernel)
    return out, grads


def jitted_output_and_grads(conv, x, kernel, strides, padding):
    return jax.jit(lambda x_, k_: output_and_grads(conv, x_, k_, strides, padding))(x, kernel)


CASES = [
    # (x shape, kernel (kh, kw, C_in, F), strides, padding)
    ((2, 8, 8, 3), (3, 3, 3, 4), 1, "SAME"),
    ((2, 8, 8, 1), (3, 3, 1, 5), 2, "SAME"),
    ((3, 7, 7, 4), (3, 3, 4, 6), 2, "SAME"),  # odd size, stride 2: asymmetric SAME padding
    ((2, 6, 6, 4), (1, 1, 4, 8), 2, "SAME"),  # ResNet downsampling shortcut
    ((2, 6, 6, 4), (1, 1, 4, 3), 1, "VALID"),
    ((2, 9, 9, 3), (5, 5, 3, 4), 1, 2),  # AlexNet-style 5x5, padding 2
    ((2, 11, 11, 3), (5, 5, 3, 4), (2, 2), ((2, 1), (0, 3))),
    ((1, 5, 7, 2), (3, 2, 2, 3), (1, 2), "VALID"),  # rectangular image and kernel
]


@pytest.mark.parametrize("x_shape, kernel_shape, strides, padding", CASES)
def test_conv2d_value_and_gradients_equal_lax(x_shape, kernel_shape, strides, padding):
    x, kernel = random_pair(x_shape, kernel_shape)
    got = jitted_output_and_grads(conv2d, x, kernel, strides, padding)
    want = jitted_output_and_grads(lax_conv, x, kernel, strides, padding)
    chex.assert_trees_all_close(got, want, **TOL)


def test_conv2d_matches_direct_numpy_sum():
    x, kernel = random_pair((2, 7, 7, 3), (3, 3, 3, 4), seed=3)
    np.testing.assert_allclose(conv2d(x, kernel, 2, 1), numpy_conv(x, kernel, stride=2, pad=1), rtol=1e-5, atol=1e-5)


def test_kernel_gradient_of_sum_is_window_sum_of_inputs():
    """d/dW sum(conv(x, W)) [i, j, c, f] = sum of x_pad over the positions tap (i, j) visits, for every f."""
    x, kernel = random_pair((2, 5, 5, 2), (3, 3, 2, 3), seed=4)
    grad = jax.jit(jax.grad(lambda k: conv2d(x, k, 1, "SAME").sum()))(kernel)
    x_pad = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.stack([x_pad[:, i : i + 5, j : j + 5].sum(axis=(0, 1, 2)) for i in range(3) for j in range(3)])
    np.testing.assert_allclose(grad[..., 0].reshape(9, 2), expected, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grad[..., 0], grad[..., 2])


@pytest.mark.parametrize("chunk_bytes", [None, 1, 3 * 10 * 10 * 4 * 4])
def test_kernel_grad_chunking_equals_whole_batch(chunk_bytes):
    """Chunk of one sample, and chunks of 3 samples over a batch of 7 (scan plus a remainder)."""
    x, _ = random_pair((7, 8, 8, 4), (3, 3, 4, 5), seed=5)
    grad_out = normal((7, 8, 8, 5), 6)
    pads = ((1, 1), (1, 1))
    _, kernel_vjp = jax.vjp(lambda k: lax_conv(x, k, 1, pads), jnp.zeros((3, 3, 4, 5)))
    got = jax.jit(lambda x_, g_: kernel_grad_by_taps(x_, g_, (3, 3), (1, 1), pads, chunk_bytes=chunk_bytes))(
        x, grad_out
    )
    chex.assert_trees_all_close(got, kernel_vjp(grad_out)[0], **TOL)


@pytest.mark.parametrize("in_axes", [(0, 0), (None, 0), (0, None)])
def test_vmap_over_seeds_matches_lax(in_axes):
    """Kernels batched over seeds (with and without per-seed inputs), and inputs batched alone."""
    seeds = 3
    x, kernel = random_pair((seeds, 2, 6, 6, 3), (seeds, 3, 3, 3, 4), seed=8)
    x = x if in_axes[0] == 0 else x[0]
    kernel = kernel if in_axes[1] == 0 else kernel[0]

    def per_seed(conv):
        return jax.jit(jax.vmap(lambda x_, k_: output_and_grads(conv, x_, k_, (2, 2), "SAME"), in_axes=in_axes))(
            x, kernel
        )

    chex.assert_trees_all_close(per_seed(conv2d), per_seed(lax_conv), **TOL)


def test_grad_of_vmapped_loss_and_nested_vmap():
    x, kernel = random_pair((2, 2, 2, 5, 5, 3), (2, 2, 3, 3, 3, 4), seed=9)

    def total(conv):
        loss = lambda x_, k_: jnp.tanh(conv(x_, k_, 1, "SAME")).sum()  # noqa: E731
        return jax.jit(jax.grad(lambda x_, k_: jax.vmap(jax.vmap(loss))(x_, k_).sum(), argnums=(0, 1)))(x, kernel)

    chex.assert_trees_all_close(total(conv2d), total(lax_conv), **TOL)


@pytest.mark.parametrize(
    "padding, image, kernel, strides, expected",
    [
        ("SAME", (8, 8), (3, 3), (1, 1), ((1, 1), (1, 1))),
        ("SAME", (8, 8), (3, 3), (2, 2), ((0, 1), (0, 1))),  # out 4: 3*2 + 3 - 8 = 1 pad, all after
        ("SAME", (7, 7), (3, 3), (2, 2), ((1, 1), (1, 1))),
        ("SAME", (8, 8), (1, 1), (2, 2), ((0, 0), (0, 0))),
        ("valid", (8, 8), (3, 3), (1, 1), ((0, 0), (0, 0))),
        (2, (8, 8), (5, 5), (1, 1), ((2, 2), (2, 2))),
        ((1, (0, 2)), (8, 8), (3, 3), (1, 1), ((1, 1), (0, 2))),
    ],
)
def test_explicit_padding_hand_computed(padding, image, kernel, strides, expected):
    assert explicit_padding(padding, image, kernel, strides) == expected


@pytest.mark.parametrize(
    "padding, message",
    [
        ("FULL", "padding must be"),
        ((1, 2, 3), "padding must be"),
        ((1, (2,)), "each padding entry"),
        (-1, "each padding entry"),
    ],
)
def test_bad_padding_raises(padding, message):
    x, kernel = random_pair((1, 4, 4, 1), (3, 3, 1, 1))
    with pytest.raises(ValueError, match=f"fast_conv.py: {message}"):
        conv2d(x, kernel, 1, padding)


def test_bad_strides_raise():
    x, kernel = random_pair((1, 4, 4, 1), (3, 3, 1, 1))
    with pytest.raises(ValueError, match="fast_conv.py: strides must be"):
        conv2d(x, kernel, 0)


def test_bad_rank_raises():
    x, kernel = random_pair((4, 4, 1), (3, 3, 1, 1))
    with pytest.raises(ValueError, match="fast_conv.py: conv2d expects x of rank 4"):
        conv2d(x, kernel)


def test_channel_mismatch_raises():
    x, kernel = random_pair((1, 4, 4, 2), (3, 3, 3, 1))
    with pytest.raises(ValueError, match="input channels 2 do not match kernel input channels 3"):
        conv2d(x, kernel)


@pytest.mark.parametrize("unroll", [8, 1])
def test_seed_vmap_unrolled_and_looped_paths_agree_with_xla(monkeypatch, unroll):
    """Per-seed kernels: unrolled convolutions (few seeds) and lax.map (many) give XLA's result."""
    monkeypatch.setattr(fast_conv, "UNROLL_SEEDS", unroll)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
    kernels = jnp.asarray(rng.normal(size=(3, 3, 3, 3, 4)), jnp.float32)
    pads = ((1, 1), (1, 1))

    def loss(conv, k):
        return jnp.sum(conv(x, k) ** 2)

    ours = jax.vmap(jax.value_and_grad(lambda k: loss(lambda a, b: fast_conv.conv2d(a, b, 1, pads), k)))(kernels)
    ref = jax.vmap(jax.value_and_grad(lambda k: loss(lambda a, b: fast_conv.xla_conv2d(a, b, (1, 1), pads), k)))(
        kernels
    )
    chex.assert_trees_all_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_per_seed_xla_conv_equals_xla_under_vmap_over_seed_kernels():
    """xla_per_seed (the GPU default): XLA's own convolutions, one per seed under vmap."""
    xs, kernels = normal((3, 4, 9, 9, 5), 0), normal((3, 3, 3, 5, 6), 1)

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(x, k, (2, 2), ((1, 1), (1, 1)))))

    got = jax.jit(jax.vmap(jax.value_and_grad(loss(fast_conv.per_seed_xla_conv2d), argnums=(0, 1))))(xs, kernels)
    want = jax.vmap(jax.value_and_grad(loss(lax_conv), argnums=(0, 1)))(xs, kernels)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4)
    # one convolution per seed, no grouped convolution
    hlo = jax.jit(jax.vmap(loss(fast_conv.per_seed_xla_conv2d))).lower(xs, kernels).as_text()
    assert "feature_group_count = 3" not in hlo and hlo.count("stablehlo.convolution") == 3


def test_gpu_default_is_per_seed_xla(monkeypatch):
    from distill_jax.models import layers

    monkeypatch.delenv("DISTILL_JAX_CONV", raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert layers.resolve_conv("auto") == "xla_per_seed"
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert layers.resolve_conv("auto") == "xla"
    assert layers.resolve_conv("taps") == "taps"  # an explicit choice is kept on any platform
