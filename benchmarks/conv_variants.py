"""Convolution variants that only `conv_cpu.py` times, beside the library's own.

The networks' convolutions live in `distill_jax/models/` (`fast_conv.py`, `onednn_conv.py`,
chosen by `layers.resolve_conv`). What is here exists to be compared with them:

- `im2col_conv2d`: the convolution as one matmul of all kh*kw taps materialised (im2col);
- `kernel_grad_by_patches`: the kernel gradient the same way (fast_conv computes it tap by tap);
- `Conv`: a drop-in for `flax.linen.Conv` (2-D, NHWC) computed by `fast_conv.conv2d`, for a
  standalone train step with one convolution swapped (the networks pick theirs in `layers.conv`).

Each takes fast_conv's interface (`conv(x, kernel, strides, pads)` with static strides and
explicit pads; `kernel_grad(x, grad_out, kernel_hw, strides, pads)`), so
`fast_conv.make_conv2d` assembles them into a differentiable convolution.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.models import fast_conv

_WHERE = "benchmarks/conv_variants.py"


def kernel_grad_by_patches(
    x: jax.Array, grad_out: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], pads
) -> jax.Array:
    """dL/dkernel (HWIO) as dY^T @ patches with all kh*kw taps materialised (im2col)."""
    x_padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    patches = jnp.concatenate(fast_conv.tap_slices(x_padded, kernel_hw, strides, grad_out.shape[1:3]), axis=-1)
    grad = jnp.einsum("nhwf,nhwk->kf", grad_out, patches, preferred_element_type=jnp.float32)
    return grad.reshape(kernel_hw + (x.shape[-1], grad_out.shape[-1]))


def im2col_conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], pads) -> jax.Array:
    """Convolution as one matmul of the (N, Ho, Wo, kh*kw*C) patches with the flattened kernel."""
    kh, kw, channels, features = kernel.shape
    x_padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (x_padded.shape[1] - kh) // strides[0] + 1
    wo = (x_padded.shape[2] - kw) // strides[1] + 1
    patches = jnp.concatenate(fast_conv.tap_slices(x_padded, (kh, kw), strides, (ho, wo)), axis=-1)
    return jnp.einsum("nhwk,kf->nhwf", patches, kernel.reshape(kh * kw * channels, features))


def _kernel_hw(kernel_size: int | Sequence[int]) -> tuple[int, int]:
    """An int (a square kernel) or two positive ints."""
    pair = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{_WHERE}: kernel_size must be a positive int or a pair of positive ints, "
                         f"got {kernel_size!r}")
    return pair  # type: ignore[return-value]


class Conv(nn.Module):
    """Drop-in for flax.linen.Conv (2-D, NHWC) computed by `fast_conv.conv2d`.

    Parameters are 'kernel' (kh, kw, C, F) and 'bias' (F,), exactly as nn.Conv (same
    initialisers, same draws). Leading batch axes beyond one are flattened, and an unbatched
    (H, W, C) input is accepted, as in nn.Conv. Padding: 'SAME', 'VALID', 'CIRCULAR', 'REFLECT',
    an int, or two ints/(low, high) pairs. Unlike nn.Conv, an int kernel_size means a square
    kernel (nn.Conv would make it 1-D); strides likewise.
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: fast_conv.PaddingLike = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel_hw = _kernel_hw(self.kernel_size)
        if inputs.ndim < 3:
            raise ValueError(f"{_WHERE}: Conv expects inputs (..., H, W, C), got shape {inputs.shape}")
        batch_shape = inputs.shape[:-3]
        x = inputs.reshape((-1,) + inputs.shape[-3:])
        padding = self.padding
        if isinstance(padding, str) and padding.upper() in ("CIRCULAR", "REFLECT"):
            # Same split as nn.Conv: (k - 1) // 2 before, k // 2 after.
            mode = {"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding.upper()]
            x = jnp.pad(x, ((0, 0),) + tuple(((k - 1) // 2, k // 2) for k in kernel_hw) + ((0, 0),), mode=mode)
            padding = "VALID"
        kernel = self.param("kernel", self.kernel_init, kernel_hw + (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = fast_conv.conv2d(x, kernel, self.strides, padding)
        if bias is not None:
            y = y + bias
        return y.reshape(batch_shape + y.shape[1:])
