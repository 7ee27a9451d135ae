"""2-D convolution whose training step is fast on CPU.

Why: XLA's CPU backend computes the *kernel* gradient of a convolution about ten
times slower than the forward pass (measured: 2.2 s vs 0.23 s for a 3x3
128->128 conv on (256, 16, 16, 128)), and no XLA flag changes it. The forward
and input-gradient convolutions are fine. So `conv2d` keeps XLA's forward and
input gradient and computes the kernel gradient itself, as one small matmul per
kernel tap: dW[i, j] = sum over (n, h, w) of x_pad[n, s*h + i, s*w + j, :]^T dY[n, h, w, :].
Every tap contracts the whole batch and image, so each matmul is large and
dense, and no im2col patch tensor of kh*kw times the input is materialised.

`Conv` is a drop-in for `flax.linen.Conv` (2-D, NHWC): same parameter names and
shapes ('kernel' HWIO, 'bias'), so checkpoints and imported weights are unchanged.
See benchmarks/README.md ("Convolutions on CPU") for the measurements.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

PaddingLike = Union[str, int, Sequence[Union[int, tuple[int, int]]]]
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
_WHERE = "distill_jax/models/fast_conv.py"


def _pair(value: int | Sequence[int], field: str) -> tuple[int, int]:
    """An int or a length-2 sequence of positive ints, as a pair."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{_WHERE}: {field} must be a positive int or a pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def explicit_padding(
    padding: PaddingLike,
    image_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    strides: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) zero padding, with the same meaning as lax/Flax.

    Accepts 'SAME', 'VALID', an int (all sides), or two entries that are each an
    int (both sides) or a (low, high) pair.
    """
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"{_WHERE}: padding must be 'SAME', 'VALID', an int or two (low, high) pairs, got {padding!r}")
        pads = lax.padtype_to_pads(image_hw, kernel_hw, strides, padding.upper())
        return tuple((int(lo), int(hi)) for lo, hi in pads)  # type: ignore[return-value]
    if isinstance(padding, int):
        padding = (padding, padding)
    if not isinstance(padding, Sequence) or len(padding) != 2:
        raise ValueError(f"{_WHERE}: padding must be 'SAME', 'VALID', an int or two (low, high) pairs, got {padding!r}")
    pads = []
    for side in padding:
        if isinstance(side, int):
            side = (side, side)
        if not (isinstance(side, Sequence) and len(side) == 2 and all(isinstance(v, int) and v >= 0 for v in side)):
            raise ValueError(f"{_WHERE}: each padding entry must be a non-negative int or (low, high) pair, got {padding!r}")
        pads.append((int(side[0]), int(side[1])))
    return tuple(pads)  # type: ignore[return-value]


def xla_conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], pads) -> jax.Array:
    """Plain XLA convolution, NHWC input, HWIO kernel, explicit padding."""
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DIMENSION_NUMBERS)


def tap_slices(x_padded: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], out_hw: tuple[int, int]):
    """For each kernel tap (i, j), the input pixels it multiplies: (N, Ho, Wo, C) each, row-major taps."""
    (kh, kw), (sh, sw), (ho, wo) = kernel_hw, strides, out_hw
    return [
        lax.slice(
            x_padded,
            (0, i, j, 0),
            (x_padded.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, x_padded.shape[3]),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]


def kernel_grad_by_taps(
    x: jax.Array, grad_out: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], pads
) -> jax.Array:
    """dL/dkernel (HWIO) as one (C, N*Ho*Wo) @ (N*Ho*Wo, F) matmul per tap."""
    x_padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    out_hw = grad_out.shape[1:3]
    taps = [
        jnp.einsum("nhwc,nhwf->cf", tap, grad_out, preferred_element_type=jnp.float32)
        for tap in tap_slices(x_padded, kernel_hw, strides, out_hw)
    ]
    channels, features = x.shape[-1], grad_out.shape[-1]
    return jnp.stack(taps).reshape(kernel_hw + (channels, features))


def kernel_grad_by_patches(
    x: jax.Array, grad_out: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], pads
) -> jax.Array:
    """dL/dkernel (HWIO) as patches^T @ dY with all kh*kw taps materialised (im2col)."""
    x_padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    patches = jnp.concatenate(tap_slices(x_padded, kernel_hw, strides, grad_out.shape[1:3]), axis=-1)
    grad = jnp.einsum("nhwk,nhwf->kf", patches, grad_out, preferred_element_type=jnp.float32)
    return grad.reshape(kernel_hw + (x.shape[-1], grad_out.shape[-1]))


def im2col_conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], pads) -> jax.Array:
    """Convolution as one matmul of the (N, Ho, Wo, kh*kw*C) patches with the flattened kernel."""
    kh, kw, channels, features = kernel.shape
    x_padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (x_padded.shape[1] - kh) // strides[0] + 1
    wo = (x_padded.shape[2] - kw) // strides[1] + 1
    patches = jnp.concatenate(tap_slices(x_padded, (kh, kw), strides, (ho, wo)), axis=-1)
    return jnp.einsum("nhwk,kf->nhwf", patches, kernel.reshape(kh * kw * channels, features))


def make_conv2d(kernel_grad_fn=kernel_grad_by_taps):
    """conv2d(x, kernel, strides, pads) with XLA's forward/input gradient and `kernel_grad_fn` for dW.

    strides and pads are static hashable tuples (nondiff_argnums).
    """

    def forward(x, kernel, strides, pads):
        return xla_conv2d(x, kernel, strides, pads), (x, kernel)

    def backward(strides, pads, residuals, grad_out):
        x, kernel = residuals
        _, input_vjp = jax.vjp(lambda x_: xla_conv2d(x_, kernel, strides, pads), x)
        (grad_x,) = input_vjp(grad_out)
        grad_kernel = kernel_grad_fn(x, grad_out, kernel.shape[:2], strides, pads)
        return grad_x, grad_kernel.astype(kernel.dtype)

    conv = jax.custom_vjp(xla_conv2d, nondiff_argnums=(2, 3))
    conv.defvjp(forward, backward)
    return conv
