"""2-D convolution whose training step is fast on CPU.

Why: XLA's CPU backend computes the *kernel* gradient of a convolution several
times slower than the forward pass (on a 2-core AMD EPYC: 1.44 vs 0.12 CPU-s on
(100, 32, 32, 64) 3x3 64->64; `benchmarks/conv_cpu.py` measures it), and no XLA flag changes it. The forward and
input-gradient convolutions are fine. So `conv2d` keeps XLA's forward and input
gradient and computes the kernel gradient itself, as one matmul per kernel tap:
dW[i, j] = sum over (n, h, w) of x_pad[n, s*h + i, s*w + j, :]^T dY[n, h, w, :],
walking the batch in cache-sized chunks, because on a small CPU memory traffic
(the shifted copies of the input), not arithmetic, is the cost.

vmap over seeds of kernels would turn XLA's convolution into a grouped one,
which is very slow on CPU; each piece is therefore batched by folding the
vmapped axis into the batch, or by a loop over seeds (see _vmap_friendly).

Limits: 2-D only, no dilation or feature groups; first-order reverse mode only:
jvp (as for any jax.custom_vjp) and grad-of-grad (the custom_vmap pieces of the
backward pass cannot be transposed) fail, so meta-gradient code (distillation
through training steps) builds its networks with conv='xla'.

The networks call `conv2d` through `layers.conv`, whose parameters ('kernel' HWIO, 'bias')
are nn.Conv's, so checkpoints and imported weights do not depend on the implementation.
benchmarks/conv_cpu.py times it against other variants (benchmarks/conv_variants.py);
benchmarks/README.md has the train step.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Union

import jax
import jax.numpy as jnp
from jax import lax

PaddingLike = Union[str, int, Sequence[Union[int, tuple[int, int]]]]
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
_WHERE = "distill_jax/models/fast_conv.py"
# Padded input bytes per batch chunk in the kernel gradient: small enough that a
# chunk and its shifted taps stay in cache (256 KB: the best chunk size in benchmarks/conv_cpu.py's sweep).
DEFAULT_CHUNK_BYTES = 1 << 18
# Seeds up to this many get one unrolled convolution each under vmap; more use lax.map
# (compile time grows with the unrolled copies).
UNROLL_SEEDS = 8


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
            raise ValueError(
                f"{_WHERE}: padding must be 'SAME', 'VALID', an int or two (low, high) pairs, got {padding!r}"
            )
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
            raise ValueError(
                f"{_WHERE}: each padding entry must be a non-negative int or (low, high) pair, got {padding!r}"
            )
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


def _taps_times_grad(x_padded, grad_out, kernel_hw, strides):
    """(kh*kw, F, C): per tap, dY^T @ x_tap. dY^T comes first so XLA transposes dY once, not every tap."""
    out_hw = grad_out.shape[1:3]
    return jnp.stack(
        [
            jnp.einsum("nhwf,nhwc->fc", grad_out, tap, preferred_element_type=jnp.float32)
            for tap in tap_slices(x_padded, kernel_hw, strides, out_hw)
        ]
    )


def kernel_grad_by_taps(
    x: jax.Array,
    grad_out: jax.Array,
    kernel_hw: tuple[int, int],
    strides: tuple[int, int],
    pads,
    chunk_bytes: int | None = DEFAULT_CHUNK_BYTES,
) -> jax.Array:
    """dL/dkernel (HWIO) as one dY^T @ x_tap matmul per kernel tap.

    With `chunk_bytes`, the batch is walked in chunks of about that many bytes of
    padded input (lax.scan), so the shifted copies of a chunk stay in cache: on
    this machine memory traffic, not arithmetic, dominates the unchunked form.
    A chunk is never smaller than twice the kernel gradient's bytes, as every
    chunk re-reads and re-writes the running sum (matters for 8x8x256, 4x4x512).
    """
    x_padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    batch = x.shape[0]
    per_sample = x_padded[0].size * x_padded.dtype.itemsize
    grad_bytes = 4 * kernel_hw[0] * kernel_hw[1] * x.shape[-1] * grad_out.shape[-1]
    chunk = batch if chunk_bytes is None else max(1, min(batch, max(chunk_bytes, 2 * grad_bytes) // per_sample))
    n_chunks, remainder = divmod(batch, chunk)
    if n_chunks <= 1:
        total = _taps_times_grad(x_padded, grad_out, kernel_hw, strides)
    else:
        full = n_chunks * chunk
        xs = x_padded[:full].reshape((n_chunks, chunk) + x_padded.shape[1:])
        gs = grad_out[:full].reshape((n_chunks, chunk) + grad_out.shape[1:])

        def add_chunk(acc, chunk_pair):
            return acc + _taps_times_grad(chunk_pair[0], chunk_pair[1], kernel_hw, strides), None

        zeros = jnp.zeros((kernel_hw[0] * kernel_hw[1], grad_out.shape[-1], x.shape[-1]), jnp.float32)
        total, _ = lax.scan(add_chunk, zeros, (xs, gs))
        if remainder:
            total = total + _taps_times_grad(x_padded[full:], grad_out[full:], kernel_hw, strides)
    return jnp.swapaxes(total, 1, 2).reshape(kernel_hw + (x.shape[-1], grad_out.shape[-1]))


def _vmap_friendly(fn: Callable, foldable: tuple[bool, ...]) -> Callable:
    """fn(*arrays) whose vmap avoids XLA's grouped convolution.

    vmap of a convolution whose kernel is batched (several seeds in one program)
    becomes a grouped convolution, which XLA's CPU backend runs far slower than
    the convolutions one by one. So: when only arguments marked `foldable`
    (activations with a leading batch axis) are batched, the vmapped axis is
    folded into that batch axis; otherwise the batch is looped with lax.map.
    """

    @jax.custom_batching.custom_vmap
    def wrapped(*arrays):
        return fn(*arrays)

    @wrapped.def_vmap
    def rule(axis_size, in_batched, *arrays):
        if all(fold or not batched for fold, batched in zip(foldable, in_batched, strict=True)):
            folded = [
                a.reshape((-1,) + a.shape[2:]) if batched else a for a, batched in zip(arrays, in_batched, strict=True)
            ]
            out = fn(*folded)
            return out.reshape((axis_size, -1) + out.shape[1:]), True
        if axis_size <= UNROLL_SEEDS:
            # Unrolled: one ordinary convolution per seed (lax.map's loop cost 1.7x a step on CPU).
            outs = [
                fn(*[a[i] if batched else a for a, batched in zip(arrays, in_batched, strict=True)])
                for i in range(axis_size)
            ]
            return jnp.stack(outs), True
        broadcast = [
            a if batched else jnp.broadcast_to(a, (axis_size,) + a.shape)
            for a, batched in zip(arrays, in_batched, strict=True)
        ]
        return lax.map(lambda args: fn(*args), tuple(broadcast)), True

    return wrapped


def xla_input_grad(x: jax.Array, kernel: jax.Array, grad_out: jax.Array, strides, pads) -> jax.Array:
    """dL/dx through XLA's own transposed convolution."""
    _, input_vjp = jax.vjp(lambda x_: xla_conv2d(x_, kernel, strides, pads), x)
    return input_vjp(grad_out)[0]


def xla_kernel_grad(x: jax.Array, grad_out: jax.Array, kernel_hw, strides, pads) -> jax.Array:
    """dL/dkernel (HWIO) through XLA's own kernel-gradient convolution."""
    kernel = jnp.zeros(tuple(kernel_hw) + (x.shape[-1], grad_out.shape[-1]), x.dtype)
    _, kernel_vjp = jax.vjp(lambda k_: xla_conv2d(x, k_, strides, pads), kernel)
    return kernel_vjp(grad_out)[0]


def make_conv2d(
    kernel_grad_fn: Callable = kernel_grad_by_taps,
    conv_fn: Callable = xla_conv2d,
    input_grad_fn: Callable = xla_input_grad,
) -> Callable:
    """conv(x, kernel, strides, pads) from three pieces: forward, dL/dx and dL/dkernel.

    Defaults: XLA's forward and input gradient, the tap-by-tap kernel gradient.
    conv_fn(x, kernel, strides, pads); input_grad_fn(x, kernel, grad_out, strides, pads);
    kernel_grad_fn(x, grad_out, kernel_hw, strides, pads). strides and pads are static
    hashable tuples (nondiff_argnums). Every piece is wrapped by _vmap_friendly, so
    vmapping over seeds of kernels stays fast.
    """

    def conv_value(x, kernel, strides, pads):
        return _vmap_friendly(lambda x_, k_: conv_fn(x_, k_, strides, pads), (True, False))(x, kernel)

    def forward(x, kernel, strides, pads):
        return conv_value(x, kernel, strides, pads), (x, kernel)

    def backward(strides, pads, residuals, grad_out):
        x, kernel = residuals
        grad_x = _vmap_friendly(lambda x_, k_, g_: input_grad_fn(x_, k_, g_, strides, pads), (True, False, True))(
            x, kernel, grad_out)
        grad_kernel = _vmap_friendly(
            lambda x_, g_: kernel_grad_fn(x_, g_, kernel.shape[-4:-2], strides, pads), (False, False)
        )(x, grad_out)
        return grad_x, grad_kernel.astype(kernel.dtype)

    conv = jax.custom_vjp(conv_value, nondiff_argnums=(2, 3))
    conv.defvjp(forward, backward)
    return conv


_fast_conv = make_conv2d(kernel_grad_by_taps)
# XLA's three convolutions, only wrapped so that per-seed kernels under vmap stay one
# convolution per seed (on GPU, XLA's grouped convolution is slow: benchmarks/README.md, "GPU: one NVIDIA H200").
_per_seed_xla_conv = make_conv2d(xla_kernel_grad)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
) -> jax.Array:
    """2-D convolution, x (N, H, W, C) and kernel (kh, kw, C, F) -> (N, Ho, Wo, F).

    Same result as lax.conv_general_dilated with NHWC/HWIO/NHWC; its kernel
    gradient is computed tap by tap (see module docstring).
    """
    strides, pads = check_conv_args(x, kernel, strides, padding)
    return _fast_conv(x, kernel, strides, pads)


def per_seed_xla_conv2d(x: jax.Array, kernel: jax.Array, strides: int | Sequence[int] = 1,
                        padding: PaddingLike = "SAME") -> jax.Array:
    """conv2d's interface; every piece is XLA's own convolution, one per seed under vmap."""
    strides, pads = check_conv_args(x, kernel, strides, padding)
    return _per_seed_xla_conv(x, kernel, strides, pads)


def check_conv_args(x: jax.Array, kernel: jax.Array, strides, padding: PaddingLike):
    """Checks ranks and channels; returns (strides pair, explicit pads) for a conv2d."""
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(
            f"{_WHERE}: conv2d expects x of rank 4 (N, H, W, C) and kernel of rank 4 (kh, kw, C, F), "
            f"got shapes {x.shape} and {kernel.shape}"
        )
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"{_WHERE}: conv2d input channels {x.shape[-1]} do not match kernel input channels {kernel.shape[2]} "
            f"(kernel shape {kernel.shape})"
        )
    strides = _pair(strides, "strides")
    return strides, explicit_padding(padding, x.shape[1:3], kernel.shape[:2], strides)
