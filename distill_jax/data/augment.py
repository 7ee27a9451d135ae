"""Differentiable siamese augmentation (DSA), SPEC section 2.6.

Every op is a pure function of an NHWC floating batch and a parameter pytree, written with
jnp only, so it can be jitted and differentiated with respect to the images (distillers
backpropagate through the augmentation into the synthetic pixels).

The API is split in two so one parameter draw can be applied to several batches:

* ``sample_params(rng, op, batch_size, image_shape)`` draws the random parameters of one op;
  every leaf has a leading axis of length ``batch_size``. A leading axis of length 1 means
  "one transformation shared by the whole batch", which is how DSA's siamese mode gives
  real and synthetic batches of different sizes the same transformation.
* ``apply_op(op, images, params)`` applies them (leaves of length 1 broadcast over the batch).

``augment`` / ``augment_siamese`` draw ``k`` distinct ops per call, in random order, inside
the traced computation (random permutation + ``lax.switch``), so a jitted training step is
traced once whatever ops a call picks.

Conventions (those of the DSA reference code, except where noted):

* 'flip' mirrors the width axis with probability 0.5.
* 'scale' and 'rotate' build DSA's affine matrix ``theta`` (``[[sx, 0, 0], [0, sy, 0]]`` and
  ``[[cos, -sin, 0], [sin, cos, 0]]``) that maps normalised *output* coordinates in [-1, 1]
  to normalised *input* coordinates, then resample bilinearly with zeros outside the image.
  The reference code calls torch ``affine_grid`` / ``grid_sample`` with
  ``align_corners=True``: pixel ``j`` of a side of length ``n`` sits at ``2 j / (n - 1) - 1``.
  ``affine_grid`` here places it at ``(2 j + 1) / n - 1`` (torch's ``align_corners=False``).
  For a ``theta`` without translation on a square image the two give the same sampling
  points: in both, the image centre stays put and each pixel's offset from it is multiplied
  by the 2x2 part of ``theta``. So on square images (those of every dataset here) the scale
  and rotate ops resample as the reference code does. On a non-square image they do not:
  rotation mixes the axes with ``W / H`` here and ``(W - 1) / (H - 1)`` in the reference
  (tests/test_augment.py keeps this as an expected failure). Either way, because the
  coordinates are normalised per axis, a rotation of a non-square image is not rigid.
* 'crop' translates by whole pixels: ``out[i, j] = x[i - shift_y, j - shift_x]``, zero where
  that falls outside the image; ``|shift| <= round(side / 8)`` per axis.
* 'cutout' zeroes a rectangle of ``round(H / 2) x round(W / 2)`` pixels (a square for square
  images) whose rows are ``[centre_y - size_y // 2, centre_y - size_y // 2 + size_y)``
  (likewise columns), clipped to the image: the square may lie partly outside.
* 'color' is brightness (``x + b``, ``b ~ U(-0.5, 0.5)``), then saturation
  (``(x - m) s + m`` with ``m`` the per-pixel channel mean, ``s ~ U(0, 2)``), then contrast
  (``(x - m) c + m`` with ``m`` the per-image mean over H, W, C, ``c ~ U(0.5, 1.5)``).
  With one channel the per-pixel mean is the pixel itself, so saturation is a no-op.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "DSA_OPS",
    "affine_grid",
    "apply_op",
    "augment",
    "augment_siamese",
    "bilinear_sample",
    "choose_ops",
    "crop_max_shift",
    "cutout_size",
    "sample_params",
]

DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")

FLIP_PROBABILITY = 0.5
SCALE_RATIO = 1.2  # each axis scaled by U(1 / ratio, ratio)
ROTATE_MAX_DEGREES = 15.0
CROP_RATIO = 0.125  # largest translation as a fraction of the side
CUTOUT_RATIO = 0.5  # side of the cut-out square as a fraction of the image side
BRIGHTNESS_HALF_RANGE = 0.5
SATURATION_RANGE = (0.0, 2.0)
CONTRAST_RANGE = (0.5, 1.5)

# Parameter names of each op, used to validate what apply_op receives.
_PARAM_KEYS = {
    "flip": ("flip",),
    "scale": ("scale_x", "scale_y"),
    "rotate": ("degrees",),
    "crop": ("shift_x", "shift_y"),
    "cutout": ("centre_x", "centre_y"),
    "color": ("brightness", "contrast", "saturation"),
}

Params = dict[str, jax.Array]


# --------------------------------------------------------------------------- validation


def _check_op(where: str, op: Any) -> str:
    if not isinstance(op, str) or op not in _PARAM_KEYS:
        raise ValueError(f"{where}: unknown op {op!r}; allowed ops are {DSA_OPS}")
    return op


def _check_ops(where: str, ops: Any) -> tuple[str, ...]:
    if isinstance(ops, str):
        raise ValueError(f"{where}: ops must be a sequence of op names, got the string {ops!r}; "
                         f"allowed ops are {DSA_OPS}")
    ops = tuple(ops)
    for op in ops:
        _check_op(where, op)
    if len(set(ops)) != len(ops):
        raise ValueError(f"{where}: ops must not repeat an op (k ops are drawn without "
                         f"replacement), got {ops}")
    return ops


def _check_k(where: str, k: Any, num_ops: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"{where}: k must be a Python int (it is static), got {k!r}")
    if not 0 <= k <= num_ops:
        raise ValueError(f"{where}: k must be in [0, len(ops)] = [0, {num_ops}], got {k}")
    return k


def _check_images(where: str, name: str, images: Any) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"{where}: {name} must be an NHWC batch (4 axes), got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"{where}: {name} must hold floating values, got dtype {images.dtype}")
    return images


def _check_image_shape(where: str, image_shape: Any) -> tuple[int, int]:
    try:
        shape = tuple(operator.index(s) for s in image_shape)
    except TypeError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"{where}: image_shape must be (H, W) or (H, W, C) of positive ints, "
                         f"got {image_shape!r}")
    return shape[0], shape[1]


# --------------------------------------------------------------------------- sizes


def crop_max_shift(side: int) -> int:
    """Largest translation (pixels) of 'crop' on a side of this length (DSA's rounding)."""
    return int(side * CROP_RATIO + 0.5)


def cutout_size(side: int) -> int:
    """Length (pixels) of the cut-out square along a side of this length."""
    return int(side * CUTOUT_RATIO + 0.5)


# --------------------------------------------------------------------------- resampling


def affine_grid(theta: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Input pixel coordinates (ys, xs), each (B, height, width), sampled by each output pixel.

    ``theta`` (B, 2, 3) maps normalised output (x, y, 1) to normalised input (x, y), with the
    pixel centres of torch ``affine_grid(align_corners=False)``; the result is in pixel units
    (pixel centres at integers) so it can go straight to ``bilinear_sample``. The DSA reference
    code uses ``align_corners=True``; for the scale and rotate ops on square images the two
    agree (see the module docstring).
    """
    theta = jnp.asarray(theta, jnp.float32)
    if theta.ndim != 3 or theta.shape[1:] != (2, 3):
        raise ValueError(f"affine_grid: theta must have shape (B, 2, 3), got {theta.shape}")
    _check_image_shape("affine_grid", (height, width))
    return _affine_grid(theta, height, width)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _affine_grid(theta: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    norm_x = (2.0 * jnp.arange(width, dtype=jnp.float32) + 1.0) / width - 1.0
    norm_y = (2.0 * jnp.arange(height, dtype=jnp.float32) + 1.0) / height - 1.0
    out_x = norm_x[None, None, :]
    out_y = norm_y[None, :, None]
    row = lambda r, c: theta[:, r, c][:, None, None]  # noqa: E731
    in_x = row(0, 0) * out_x + row(0, 1) * out_y + row(0, 2)
    in_y = row(1, 0) * out_x + row(1, 1) * out_y + row(1, 2)
    xs = ((in_x + 1.0) * width - 1.0) / 2.0
    ys = ((in_y + 1.0) * height - 1.0) / 2.0
    return ys, xs


def _gather_zero_fill(images: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """images[b, rows[b, i, j], cols[b, i, j]], zero where the index is outside the image."""
    batch, height, width, _ = images.shape
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    batch_index = jnp.arange(batch)[:, None, None]
    values = images[batch_index, jnp.clip(rows, 0, height - 1), jnp.clip(cols, 0, width - 1)]
    return jnp.where(inside[..., None], values, jnp.zeros((), images.dtype))


def bilinear_sample(images: jax.Array, ys: jax.Array, xs: jax.Array) -> jax.Array:
    """Bilinear interpolation of NHWC ``images`` at pixel coordinates ``ys``, ``xs`` (B, Ho, Wo).

    Taps outside the image read zero (torch ``grid_sample`` padding_mode='zeros'). Written with
    gathers so it differentiates with respect to both the images and the coordinates.
    """
    images = _check_images("bilinear_sample", "images", images)
    ys, xs = jnp.asarray(ys, jnp.float32), jnp.asarray(xs, jnp.float32)
    if ys.shape != xs.shape or ys.ndim != 3 or ys.shape[0] != images.shape[0]:
        raise ValueError(f"bilinear_sample: ys and xs must both be (B, Ho, Wo) with B = "
                         f"{images.shape[0]}, got {ys.shape} and {xs.shape}")
    return _bilinear_sample(images, ys, xs)


@jax.jit
def _bilinear_sample(images: jax.Array, ys: jax.Array, xs: jax.Array) -> jax.Array:
    y0 = jnp.floor(ys)
    x0 = jnp.floor(xs)
    wy1 = (ys - y0)[..., None]
    wx1 = (xs - x0)[..., None]
    wy0, wx0 = 1.0 - wy1, 1.0 - wx1
    y0 = y0.astype(jnp.int32)
    x0 = x0.astype(jnp.int32)
    tap = functools.partial(_gather_zero_fill, images)
    out = (wy0 * wx0 * tap(y0, x0) + wy0 * wx1 * tap(y0, x0 + 1)
           + wy1 * wx0 * tap(y0 + 1, x0) + wy1 * wx1 * tap(y0 + 1, x0 + 1))
    return out.astype(images.dtype)


def _affine(images: jax.Array, theta: jax.Array) -> jax.Array:
    ys, xs = _affine_grid(theta, images.shape[1], images.shape[2])
    return _bilinear_sample(images, ys, xs)


# --------------------------------------------------------------------------- the ops


def _flip(images: jax.Array, p: Params) -> jax.Array:
    return jnp.where(p["flip"][:, None, None, None], images[:, :, ::-1, :], images)


def _scale(images: jax.Array, p: Params) -> jax.Array:
    zeros = jnp.zeros_like(p["scale_x"])
    theta = jnp.stack([jnp.stack([p["scale_x"], zeros, zeros], -1),
                       jnp.stack([zeros, p["scale_y"], zeros], -1)], 1)
    return _affine(images, theta)


def _rotate(images: jax.Array, p: Params) -> jax.Array:
    radians = p["degrees"] * (math.pi / 180.0)
    cos, sin, zeros = jnp.cos(radians), jnp.sin(radians), jnp.zeros_like(radians)
    theta = jnp.stack([jnp.stack([cos, -sin, zeros], -1),
                       jnp.stack([sin, cos, zeros], -1)], 1)
    return _affine(images, theta)


def _crop(images: jax.Array, p: Params) -> jax.Array:
    _, height, width, _ = images.shape
    rows = jnp.arange(height)[None, :, None] - p["shift_y"][:, None, None]
    cols = jnp.arange(width)[None, None, :] - p["shift_x"][:, None, None]
    rows, cols = jnp.broadcast_arrays(rows, cols)
    return _gather_zero_fill(images, rows, cols)


def _cutout(images: jax.Array, p: Params) -> jax.Array:
    _, height, width, _ = images.shape
    size_y, size_x = cutout_size(height), cutout_size(width)
    top = (p["centre_y"] - size_y // 2)[:, None]
    left = (p["centre_x"] - size_x // 2)[:, None]
    rows = jnp.arange(height)[None, :]
    cols = jnp.arange(width)[None, :]
    in_rows = (rows >= top) & (rows < top + size_y)  # (B, H)
    in_cols = (cols >= left) & (cols < left + size_x)  # (B, W)
    hole = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    return jnp.where(hole, jnp.zeros((), images.dtype), images)


def _color(images: jax.Array, p: Params) -> jax.Array:
    per_image = lambda v: v[:, None, None, None].astype(images.dtype)  # noqa: E731
    out = images + per_image(p["brightness"])
    pixel_mean = out.mean(axis=3, keepdims=True)
    out = (out - pixel_mean) * per_image(p["saturation"]) + pixel_mean
    image_mean = out.mean(axis=(1, 2, 3), keepdims=True)
    return (out - image_mean) * per_image(p["contrast"]) + image_mean


_APPLY: dict[str, Callable[[jax.Array, Params], jax.Array]] = {
    "flip": _flip, "scale": _scale, "rotate": _rotate,
    "crop": _crop, "cutout": _cutout, "color": _color,
}


def sample_params(rng: jax.Array, op: str, batch_size: int, image_shape: Sequence[int]) -> Params:
    """Random parameters of ``op`` for ``batch_size`` images (one set per image).

    ``image_shape`` is (H, W) or (H, W, C); crop and cutout need H and W for their ranges.
    Pass ``batch_size=1`` for one set shared by every image of any batch (siamese mode).
    """
    _check_op("sample_params", op)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"sample_params: batch_size must be a positive int, got {batch_size!r}")
    height, width = _check_image_shape("sample_params", image_shape)
    return _draw_params(rng, op, batch_size, height, width)


# Jitted (op and sizes static) so eager callers reuse one compilation per op and shape.
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _draw_params(rng: jax.Array, op: str, batch_size: int, height: int, width: int) -> Params:
    shape = (batch_size,)
    uniform = functools.partial(jax.random.uniform, shape=shape, dtype=jnp.float32)
    if op == "flip":
        return {"flip": jax.random.bernoulli(rng, FLIP_PROBABILITY, shape)}
    if op == "scale":
        kx, ky = jax.random.split(rng)
        low, high = 1.0 / SCALE_RATIO, SCALE_RATIO
        return {"scale_x": uniform(kx, minval=low, maxval=high),
                "scale_y": uniform(ky, minval=low, maxval=high)}
    if op == "rotate":
        return {"degrees": uniform(rng, minval=-ROTATE_MAX_DEGREES, maxval=ROTATE_MAX_DEGREES)}
    if op == "crop":
        kx, ky = jax.random.split(rng)
        max_x, max_y = crop_max_shift(width), crop_max_shift(height)
        return {"shift_x": jax.random.randint(kx, shape, -max_x, max_x + 1, jnp.int32),
                "shift_y": jax.random.randint(ky, shape, -max_y, max_y + 1, jnp.int32)}
    if op == "cutout":
        kx, ky = jax.random.split(rng)
        # DSA's centre range: symmetric coverage of both borders for odd and even sizes.
        high_x = width + 1 - cutout_size(width) % 2
        high_y = height + 1 - cutout_size(height) % 2
        return {"centre_x": jax.random.randint(kx, shape, 0, high_x, jnp.int32),
                "centre_y": jax.random.randint(ky, shape, 0, high_y, jnp.int32)}
    kb, ks, kc = jax.random.split(rng, 3)
    return {"brightness": uniform(kb, minval=-BRIGHTNESS_HALF_RANGE, maxval=BRIGHTNESS_HALF_RANGE),
            "saturation": uniform(ks, minval=SATURATION_RANGE[0], maxval=SATURATION_RANGE[1]),
            "contrast": uniform(kc, minval=CONTRAST_RANGE[0], maxval=CONTRAST_RANGE[1])}


def apply_op(op: str, images: jax.Array, params: Params) -> jax.Array:
    """Apply ``op`` with ``params`` (from ``sample_params``) to NHWC ``images``.

    Each parameter leaf has a leading axis of the batch size, or of 1 to share one
    transformation across the batch. The result keeps the shape and dtype of ``images``.
    """
    _check_op("apply_op", op)
    images = _check_images("apply_op", "images", images)
    expected = _PARAM_KEYS[op]
    if not isinstance(params, dict) or sorted(params) != sorted(expected):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"apply_op: params of op {op!r} must be a dict with keys "
                         f"{sorted(expected)}, got {got}")
    batch = images.shape[0]
    full = {}
    for name, value in params.items():
        value = jnp.asarray(value)
        if value.ndim != 1 or value.shape[0] not in (1, batch):
            raise ValueError(f"apply_op: params[{name!r}] of op {op!r} must have shape "
                             f"({batch},) or (1,), got {value.shape}")
        full[name] = jnp.broadcast_to(value, (batch,))
    return _apply_checked(op, images, full)


@functools.partial(jax.jit, static_argnums=0)
def _apply_checked(op: str, images: jax.Array, params: Params) -> jax.Array:
    return _APPLY[op](images, params).astype(images.dtype)


# --------------------------------------------------------------------------- random op sequences


def choose_ops(rng: jax.Array, num_ops: int, k: int) -> jax.Array:
    """Indices (k,) int32 of k distinct ops out of ``num_ops``, in random order."""
    return jax.random.permutation(rng, num_ops)[:k].astype(jnp.int32)


def _augment_batches(where: str, rng: jax.Array, batches: tuple[jax.Array, ...],
                     ops: Sequence[str], k: int, per_sample: bool) -> tuple[jax.Array, ...]:
    """Apply the same k randomly chosen ops, with the same parameters, to every batch.

    Keys: ``split(rng, k + 1)`` gives the op-choice key then one key per step; step ``i``
    draws its parameters with ``sample_params(keys[i + 1], op, B or 1, image_shape)``.
    """
    ops = _check_ops(where, ops)
    k = _check_k(where, k, len(ops))
    if k == 0:
        return batches
    return _random_op_sequence(rng, tuple(batches), ops, k, bool(per_sample))


# Jitted so that eager callers compile once per (shapes, ops, k) instead of re-tracing every
# lax.switch branch per call; inside a caller's jit it is simply inlined.
@functools.partial(jax.jit, static_argnames=("ops", "k", "per_sample"))
def _random_op_sequence(rng: jax.Array, batches: tuple[jax.Array, ...], ops: tuple[str, ...],
                        k: int, per_sample: bool) -> tuple[jax.Array, ...]:
    batch_size = batches[0].shape[0] if per_sample else 1
    image_shape = batches[0].shape[1:]

    def branch(op, key, current):
        params = sample_params(key, op, batch_size, image_shape)
        return tuple(apply_op(op, images, params) for images in current)

    branches = [functools.partial(branch, op) for op in ops]
    keys = jax.random.split(rng, k + 1)
    chosen = choose_ops(keys[0], len(ops), k)

    # A scan rather than a Python loop: the switch is compiled once whatever k is.
    def step(current, choice_and_key):
        choice, key = choice_and_key
        return lax.switch(choice, branches, key, current), None

    batches, _ = lax.scan(step, batches, (chosen, keys[1:]))
    return batches


def augment(rng: jax.Array, images: jax.Array, ops: Sequence[str] = DSA_OPS, k: int = 1,
            per_sample: bool = True) -> jax.Array:
    """Apply k distinct ops drawn from ``ops`` (random order), fresh random parameters.

    ``ops`` and ``k`` are static; the op choice is traced, so a jitted caller compiles once.
    ``per_sample=False`` draws one parameter set for the whole batch.
    """
    images = _check_images("augment", "images", images)
    if images.shape[0] < 1:
        raise ValueError(f"augment: images must hold at least one image, got shape {images.shape}")
    return _augment_batches("augment", rng, (images,), ops, k, per_sample)[0]


def augment_siamese(rng: jax.Array, images_a: jax.Array, images_b: jax.Array,
                    ops: Sequence[str] = DSA_OPS, k: int = 1,
                    per_sample: bool = True) -> tuple[jax.Array, jax.Array]:
    """Augment two batches with the same ops and the same parameters (DSA's siamese mode).

    ``per_sample=True`` (training default) pairs image i of one batch with image i of the
    other, so the batch sizes must agree; ``per_sample=False`` draws one transformation for
    both whole batches, which then may differ in size (real vs synthetic in DM/DC).
    ``augment_siamese(rng, a, b)[0]`` equals ``augment(rng, a)`` for the same arguments.
    """
    images_a = _check_images("augment_siamese", "images_a", images_a)
    images_b = _check_images("augment_siamese", "images_b", images_b)
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(f"augment_siamese: images_a and images_b must have the same (H, W, C), "
                         f"got {images_a.shape[1:]} and {images_b.shape[1:]}")
    if images_a.shape[0] < 1 or images_b.shape[0] < 1:
        raise ValueError(f"augment_siamese: both batches must hold at least one image, got "
                         f"{images_a.shape[0]} and {images_b.shape[0]}")
    if per_sample and images_a.shape[0] != images_b.shape[0]:
        raise ValueError(f"augment_siamese: per_sample=True pairs images one to one, so the "
                         f"batch sizes must agree, got {images_a.shape[0]} and "
                         f"{images_b.shape[0]}; use per_sample=False for one shared transform")
    out_a, out_b = _augment_batches("augment_siamese", rng, (images_a, images_b), ops, k,
                                    per_sample)
    return out_a, out_b
