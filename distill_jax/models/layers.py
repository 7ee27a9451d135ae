"""Building blocks every network shares: conv, dense, norm and pooling.

All convolutions go through `conv(...)` and `Conv`, so a faster implementation can be swapped
in at one place; which one is an explicit argument (`implementation`), resolved once from a
network's `conv` option by `resolve_conv` when the network is built. Layers follow the
reference (PyTorch) conventions: biases on convs, symmetric padding k // 2, and
(weight_init='torch') torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and
biases, or (weight_init='flax') Flax's lecun-normal / zeros.
The option is not called `init` because a linen field of that name would hide Module.init.

Compute dtype (a network's `compute_dtype`, the config's `train.compute_dtype`; one of
COMPUTE_DTYPES): convolutions and dense layers multiply in that dtype; parameters (hence the
optimiser state) are float32 whatever it is, norms compute their statistics and normalise in
float32 (batch-norm statistics stay float32), and every network casts its logits to float32, so
losses and softmaxes see float32. Activations between layers are in the compute dtype.
"""
import dataclasses
import functools
import logging
import math
import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.models import fast_conv, onednn_conv

NORM_KINDS = ("batch", "instance", "none")
# The test networks' norm when nothing says otherwise: batch norm, as the reference code trains
# them on real subsets and on FRePo sets (docs/method.md §3; `models.norm_for_set` has the rest).
TEST_NETWORK_NORM = "batch"
INIT_KINDS = ("torch", "flax")
# The dtypes convolutions and matmuls may compute in (this module owns the names; the config's
# `train.compute_dtype` takes them). 'bfloat16' is mixed precision: float32 parameters, norms and
# logits around bfloat16 products (TPU's native mode; tensor cores on GPU).
COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(compute_dtype: str, where: str = "layers.py") -> None:
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"{where}: compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")


def cast(x, dtype):
    """`x` in `dtype`; `x` itself when it already is (float32 programs get no conversions)."""
    return x if x.dtype == jnp.dtype(dtype) else x.astype(dtype)


def _check_init(weight_init: str) -> None:
    if weight_init not in INIT_KINDS:
        raise ValueError(f"layers.py: weight_init must be one of {INIT_KINDS}, got {weight_init!r}")


# Both initialisers draw a flat vector and reshape it: XLA on CPU takes 10-20 s to compile a
# random draw of a 4-D shape, against about 1 s for the same draw in 1-D.

def _uniform(bound: float) -> Callable:
    """U(-bound, bound), torch's default for Conv2d/Linear weights and biases (bound 1/sqrt(fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound).reshape(shape)

    return init


def _lecun_normal(fan_in: int) -> Callable:
    """Flax's default kernel init: normal truncated at 2 std, rescaled to variance 1 / fan_in."""

    def init(key, shape, dtype=jnp.float32):
        std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978  # std of a unit normal truncated at +-2
        return (std * jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), dtype)).reshape(shape)

    return init


def _initialisers(weight_init: str, fan_in: int) -> tuple[Callable, Callable]:
    """(kernel_init, bias_init) for torch's or Flax's default scheme."""
    _check_init(weight_init)
    if weight_init == "torch":
        bound = 1.0 / fan_in**0.5
        return _uniform(bound), _uniform(bound)
    return _lecun_normal(fan_in), nn.initializers.zeros_init()


class Conv(nn.Module):
    """2-D convolution on NHWC with bias and torch-style symmetric padding (k // 2), computed by
    `implementation` (one of CONV_IMPLEMENTATIONS) in `compute_dtype` (float32 parameters)."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    weight_init: str = "torch"
    implementation: str = dataclasses.field(kw_only=True)
    compute_dtype: str = dataclasses.field(default="float32", kw_only=True)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, in_features = self.kernel_size, x.shape[-1]
        kernel_init, bias_init = _initialisers(self.weight_init, k * k * in_features)
        kernel = self.param("kernel", kernel_init, (k, k, in_features, self.features))
        bias = self.param("bias", bias_init, (self.features,))
        pad = k // 2
        dtype = self.compute_dtype
        return conv2d(cast(x, dtype), cast(kernel, dtype), self.strides, pad, self.implementation) + cast(bias, dtype)


# The convolution implementations (this module owns the names; the config's `model.conv` takes
# them or 'auto'): 'xla' XLA's own convolution (the only one with second derivatives), 'xla_per_seed'
# XLA's, one convolution per seed under vmap (fast_conv.per_seed_xla_conv2d), 'onednn' oneDNN
# kernels inside the XLA program (onednn_conv), 'taps' XLA's forward with fast_conv's kernel gradient.
CONV_IMPLEMENTATIONS = ("xla", "xla_per_seed", "onednn", "taps")
CONV_CHOICES = ("auto",) + CONV_IMPLEMENTATIONS
# Overrides 'auto' (only 'auto'), read when a network's choice is resolved.
CONV_ENV = "DISTILL_JAX_CONV"


def resolve_conv(choice: str = "auto") -> str:
    """The implementation (one of CONV_IMPLEMENTATIONS) that a network's `conv` option names.

    An explicit implementation is itself ('onednn' raises onednn_conv.OnednnUnavailable, with the
    reason, where its kernels cannot run). 'auto' is $DISTILL_JAX_CONV where that is set, else the
    platform's fastest (`platform_conv`). Networks call this once, when they are built, and pass
    the result down to their layers; nothing reads the environment while a network is traced.
    """
    if choice not in CONV_CHOICES:
        raise ValueError(f"models: conv must be one of {CONV_CHOICES}, got {choice!r}")
    if choice == "auto":
        override = os.environ.get(CONV_ENV) or "auto"
        if override not in CONV_CHOICES:
            raise ValueError(f"environment variable {CONV_ENV}={override!r} (the override of conv='auto'); "
                             f"expected one of {CONV_CHOICES}")
        choice = platform_conv() if override == "auto" else override
    if choice == "onednn":
        onednn_conv.require()
    return choice


def platform_conv() -> str:
    """The fastest implementation on this platform (JAX's default backend).

    On CPU: 'onednn' (oneDNN kernels that use every core; onednn_conv) where it can be built,
    else 'taps' (fast_conv: XLA's forward and a fast kernel gradient), with the reason logged
    once. XLA alone is slow on CPU: it runs narrow convolutions on one thread, computes the
    kernel gradient slowly and turns per-seed kernels under vmap into a slow grouped
    convolution (benchmarks/README.md). On GPU/TPU XLA's own convolution is the fast one. On GPU
    the default is 'xla_per_seed': XLA's convolutions, but per-seed kernels under vmap run as one
    convolution per seed rather than XLA's grouped convolution (on an H200, 5 seeds of ResNet-18
    at batch 100: 22 ms a step against 48 ms; benchmarks/README.md, "GPU: one NVIDIA H200").
    Only 'xla' has second derivatives, so code that needs grad-of-grad through a network
    builds it with conv='xla'.
    """
    if jax.default_backend() == "gpu":
        return "xla_per_seed"
    if jax.default_backend() != "cpu":
        return "xla"
    if onednn_conv.unavailable_reason() is None:
        return "onednn"
    _log_fallback_once(onednn_conv.unavailable_reason())
    return "taps"


@functools.cache
def _log_fallback_once(reason: str) -> None:
    logging.warning("convolutions: oneDNN unavailable, using fast_conv (slower on CPU): %s", reason)


def _check_implementation(implementation: str) -> None:
    if implementation not in CONV_IMPLEMENTATIONS:
        raise ValueError(f"layers.py: the convolution implementation must be one of {CONV_IMPLEMENTATIONS} "
                         f"(resolve_conv turns a network's conv option into one), got {implementation!r}")


def conv2d(x: jax.Array, kernel: jax.Array, strides: int, pad: int, implementation: str) -> jax.Array:
    """The one convolution every network uses (symmetric padding `pad`, NHWC/HWIO), computed by
    `implementation` (one of CONV_IMPLEMENTATIONS), in the operands' dtype.

    This package's CPU convolutions ('onednn', 'taps') compute in float32: on bfloat16 operands
    they convolve the operands (already rounded to bfloat16) in float32 and round the result to
    bfloat16, which is a bfloat16 convolution with float32 accumulation, the gradients likewise.
    The oneDNN library built here has float32 kernels only (oneDNN's bfloat16 ones need AVX-512
    or AMX), and on an AVX2 CPU XLA's own bfloat16 convolution is no faster than its float32
    one (`benchmarks/bf16_cpu.py`, docs/method.md §3). 'xla' and 'xla_per_seed' convolve in
    bfloat16 themselves (GPU tensor cores, TPU).
    """
    _check_implementation(implementation)
    pads = ((pad, pad), (pad, pad))
    if implementation in ("onednn", "taps") and (x.dtype != jnp.float32 or kernel.dtype != jnp.float32):
        f32 = jnp.float32
        return cast(conv2d(cast(x, f32), cast(kernel, f32), strides, pad, implementation), x.dtype)
    if implementation == "onednn":
        return onednn_conv.conv2d(x, kernel, strides, pads)
    if implementation == "xla_per_seed":
        return fast_conv.per_seed_xla_conv2d(x, kernel, strides, pads)
    if implementation != "xla":
        return fast_conv.conv2d(x, kernel, strides, pads)
    return jax.lax.conv_general_dilated(x, kernel, window_strides=(strides, strides), padding=pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Dense(nn.Module):
    """Fully connected layer; kernel (in, out) and bias, initialised like Conv, computed in
    `compute_dtype` (float32 parameters)."""

    features: int
    weight_init: str = "torch"
    compute_dtype: str = dataclasses.field(default="float32", kw_only=True)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_init, bias_init = _initialisers(self.weight_init, x.shape[-1])
        kernel = self.param("kernel", kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", bias_init, (self.features,))
        dtype = self.compute_dtype
        return cast(x, dtype) @ cast(kernel, dtype) + cast(bias, dtype)


def conv(features: int, kernel_size: int = 3, strides: int = 1, *, implementation: str, weight_init: str = "torch",
         compute_dtype: str = "float32", name: str | None = None) -> Conv:
    """The one place networks create convolutions (call inside a compact method); `implementation`
    is the network's resolved `conv` (one of CONV_IMPLEMENTATIONS), `compute_dtype` its own."""
    _check_init(weight_init)
    _check_implementation(implementation)
    check_compute_dtype(compute_dtype)
    return Conv(features, kernel_size, strides, weight_init, implementation=implementation,
                compute_dtype=compute_dtype, name=name)


def dense(features: int, *, weight_init: str = "torch", compute_dtype: str = "float32",
          name: str | None = None) -> Dense:
    """The one place networks create fully connected layers (call inside a compact method)."""
    _check_init(weight_init)
    check_compute_dtype(compute_dtype)
    return Dense(features, weight_init, compute_dtype=compute_dtype, name=name)


def logits(x: jax.Array) -> jax.Array:
    """A network's output as float32 whatever its compute dtype: losses and softmaxes see float32."""
    return cast(x, jnp.float32)


class ConvChoice(nn.Module):
    """Base of the networks: the `conv` option (one of CONV_CHOICES) is resolved to an
    implementation (`resolve_conv`) when the network is built, so `network.conv` is the one its
    layers use (pass it down as their `implementation`); `compute_dtype` (one of COMPUTE_DTYPES)
    is checked then too."""

    def __post_init__(self):
        self.conv = resolve_conv(self.conv)
        check_compute_dtype(self.compute_dtype, type(self).__name__)
        super().__post_init__()


class InstanceNorm(nn.Module):
    """Per-sample, per-channel normalisation over (H, W) with an affine scale and bias: the
    reference code's GroupNorm(C, C). Same parameters ('scale', 'bias') and values as Flax's
    `GroupNorm(group_size=1)`, written directly on the NHWC axes: less CPU time for forward +
    backward than GroupNorm's grouped reshape (`benchmarks/run_all.py --preset layers` times it)."""
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        stats = cast(x, jnp.float32)
        mean = jnp.mean(stats, axis=(1, 2), keepdims=True)
        centred = stats - mean
        var = jnp.mean(jnp.square(centred), axis=(1, 2), keepdims=True)
        return cast(centred * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias, x.dtype)


class BatchNorm(nn.BatchNorm):
    """Flax's BatchNorm (same parameters and statistics) computing in float32, statistics
    included, and returning its input's dtype."""

    def __call__(self, x, *args, **kwargs):
        return cast(super().__call__(cast(x, jnp.float32), *args, **kwargs), x.dtype)


def make_norm(kind: str, name: str, train: bool) -> Callable[[jax.Array], jax.Array]:
    """Normalisation with the reference code's settings (call inside a compact method).

    'batch': torch momentum 0.1 (Flax 0.9), eps 1e-5, batch statistics while training.
    'instance': `InstanceNorm`, as the reference's GroupNorm(C, C).
    'none': identity, creating no parameters.
    Both norms compute in float32 (statistics included) and return their input's dtype.
    """
    if kind == "batch":
        return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=jnp.float32,
                         param_dtype=jnp.float32, name=name)
    if kind == "instance":
        return InstanceNorm(epsilon=1e-5, name=name)
    if kind == "none":
        return lambda x: x
    raise ValueError(f"layers.py: norm must be one of {NORM_KINDS}, got {kind!r}")


def max_pool(x: jax.Array, size: int = 2) -> jax.Array:
    """Max-pool with window = stride = size and SAME (ceil) padding, so odd sizes never vanish:
    28 -> 14 -> 7 -> 4 -> 2 -> 1. Padding counts as -inf, so it never wins the max."""
    return nn.max_pool(x, (size, size), (size, size), padding="SAME")


def avg_pool(x: jax.Array, size: int = 2) -> jax.Array:
    """Average-pool with window = stride = size, VALID (floor), as torch's AvgPool2d: 28 -> 14 -> 7 -> 3."""
    if min(x.shape[1:3]) < size:
        raise ValueError(f"layers.py: avg_pool of size {size} needs a spatial size >= {size}, got {x.shape[1:3]}"
                         " (input too small for this depth)")
    return nn.avg_pool(x, (size, size), (size, size), padding="VALID")


def check_images(x: jax.Array, model: str) -> None:
    """Networks take NHWC batches; anything else is a caller error worth naming."""
    if x.ndim != 4:
        raise ValueError(f"{model}: expected images of shape (batch, height, width, channels), got {x.shape}")
