"""Tests of the DSA augmentation ops (distill_jax/data/augment.py) against numpy references."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.data import augment as aug


def _images(seed, shape=(4, 8, 8, 3)):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.1, 1.0, shape).astype(np.float32))


def _reference_affine(images, theta):
    """Bilinear resampling with zero padding, written as a sum over all input pixels with a
    triangle kernel (independent of the floor/gather scheme under test)."""
    images = np.asarray(images, np.float64)
    theta = np.asarray(theta, np.float64)
    batch, height, width, _ = images.shape
    out = np.zeros_like(images)
    centres_x = np.linspace(-1 + 1 / width, 1 - 1 / width, width)
    centres_y = np.linspace(-1 + 1 / height, 1 - 1 / height, height)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                nx, ny = theta[b] @ np.array([centres_x[j], centres_y[i], 1.0])
                px = (nx + 1) * width / 2 - 0.5
                py = (ny + 1) * height / 2 - 0.5
                wy = np.maximum(0.0, 1 - np.abs(py - np.arange(height)))
                wx = np.maximum(0.0, 1 - np.abs(px - np.arange(width)))
                out[b, i, j] = np.einsum("r,c,rcn->n", wy, wx, images[b])
    return out


def _torch_align_corners_resample(images, theta):
    """What the DSA reference code does for scale and rotate, ``F.grid_sample(x, F.affine_grid(theta,
    x.shape, align_corners=True), align_corners=True)`` (bilinear, padding_mode='zeros'), in numpy float64
    from PyTorch's definitions, one output pixel at a time:

    * affine_grid, align_corners=True: output pixel (i, j) of an H x W image sits at normalised
      x_j = -1 + 2 j / (W - 1), y_i = -1 + 2 i / (H - 1) (the corner pixels' centres at -1 and +1)
      and samples the input at (gx, gy) = theta @ (x_j, y_i, 1);
    * grid_sample, align_corners=True: input pixel coordinates ix = (gx + 1) / 2 * (W - 1),
      iy = (gy + 1) / 2 * (H - 1); the four neighbours (floor, floor + 1) weighted by the opposite
      areas, a neighbour outside the image contributing zero.
    """
    x = np.transpose(np.asarray(images, np.float64), (0, 3, 1, 2))  # NCHW, as torch
    theta = np.asarray(theta, np.float64)
    n, _, height, width = x.shape
    out = np.zeros_like(x)
    for b in range(n):
        for i in range(height):
            for j in range(width):
                gx, gy = theta[b] @ np.array([-1 + 2 * j / (width - 1), -1 + 2 * i / (height - 1), 1.0])
                ix, iy = (gx + 1) / 2 * (width - 1), (gy + 1) / 2 * (height - 1)
                x0, y0 = int(np.floor(ix)), int(np.floor(iy))
                for row, wy in ((y0, y0 + 1 - iy), (y0 + 1, iy - y0)):
                    for col, wx in ((x0, x0 + 1 - ix), (x0 + 1, ix - x0)):
                        if 0 <= row < height and 0 <= col < width:
                            out[b, :, i, j] += wy * wx * x[b, :, row, col]
    return np.transpose(out, (0, 2, 3, 1))


def _rotation_theta(degrees):
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]])


# ----------------------------------------------------------------------------- single ops


def test_flip_mirrors_flagged_samples_and_twice_is_identity():
    x = _images(0)
    params = {"flip": jnp.array([True, False, True, False])}
    once = np.asarray(aug.apply_op("flip", x, params))
    expected = np.asarray(x).copy()
    expected[[0, 2]] = expected[[0, 2], :, ::-1, :]
    np.testing.assert_array_equal(once, expected)
    twice = aug.apply_op("flip", jnp.asarray(once), params)
    np.testing.assert_array_equal(np.asarray(twice), np.asarray(x))


def _roll_zero_fill(image, shift_y, shift_x):
    out = np.roll(image, (shift_y, shift_x), axis=(0, 1))
    if shift_y > 0:
        out[:shift_y] = 0
    elif shift_y < 0:
        out[shift_y:] = 0
    if shift_x > 0:
        out[:, :shift_x] = 0
    elif shift_x < 0:
        out[:, shift_x:] = 0
    return out


def test_crop_translates_with_zero_fill_like_numpy_roll():
    x = _images(1)
    shift_y = jnp.array([1, -1, 0, 2], jnp.int32)
    shift_x = jnp.array([-1, 2, 0, 1], jnp.int32)
    out = np.asarray(aug.apply_op("crop", x, {"shift_x": shift_x, "shift_y": shift_y}))
    assert out.shape == x.shape
    xn = np.asarray(x)
    for b in range(4):
        np.testing.assert_array_equal(out[b], _roll_zero_fill(xn[b], int(shift_y[b]), int(shift_x[b])))
    # Spot checks by hand: sample 0 moved down 1, left 1.
    np.testing.assert_array_equal(out[0, 0], 0.0)  # vacated top row
    np.testing.assert_array_equal(out[0, :, 7], 0.0)  # vacated right column
    np.testing.assert_array_equal(out[0, 3, 2], xn[0, 2, 3])
    np.testing.assert_array_equal(out[2], xn[2])  # zero shift


def test_crop_with_drawn_params_matches_numpy():
    x = _images(2, (6, 16, 16, 2))
    params = aug.sample_params(jax.random.key(3), "crop", 6, (16, 16, 2))
    out = np.asarray(aug.apply_op("crop", x, params))
    for b in range(6):
        expected = _roll_zero_fill(np.asarray(x[b]), int(params["shift_y"][b]), int(params["shift_x"][b]))
        np.testing.assert_array_equal(out[b], expected)


def test_cutout_zeroes_exactly_the_drawn_square():
    x = _images(4, (16, 8, 8, 3))  # all values >= 0.1, so zeros can only come from the cut
    params = aug.sample_params(jax.random.key(5), "cutout", 16, (8, 8, 3))
    out = np.asarray(aug.apply_op("cutout", x, params))
    size = 4
    rows, cols = np.arange(8)[:, None], np.arange(8)[None, :]
    for b in range(16):
        top = int(params["centre_y"][b]) - size // 2
        left = int(params["centre_x"][b]) - size // 2
        mask = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
        np.testing.assert_array_equal(out[b], np.where(mask[..., None], 0.0, np.asarray(x[b])))


def test_cutout_square_may_lie_partly_outside():
    x = jnp.ones((2, 8, 8, 1))
    params = {"centre_y": jnp.array([0, 4], jnp.int32), "centre_x": jnp.array([0, 4], jnp.int32)}
    out = np.asarray(aug.apply_op("cutout", x, params))[..., 0]
    corner = np.ones((8, 8))
    corner[:2, :2] = 0  # rows/cols -2..1 clipped to 0..1
    centre = np.ones((8, 8))
    centre[2:6, 2:6] = 0
    np.testing.assert_array_equal(out[0], corner)
    np.testing.assert_array_equal(out[1], centre)


def test_rotation_by_zero_and_scale_by_one_are_identity():
    x = _images(6)
    ones, zeros = jnp.ones(4), jnp.zeros(4)
    np.testing.assert_allclose(aug.apply_op("rotate", x, {"degrees": zeros}), x, atol=1e-5)
    np.testing.assert_allclose(aug.apply_op("scale", x, {"scale_x": ones, "scale_y": ones}), x, atol=1e-5)


def test_bilinear_rotation_by_90_degrees_is_rot90():
    x = _images(7, (1, 4, 4, 2))
    ys, xs = aug.affine_grid(jnp.asarray(_rotation_theta(90.0))[None], 4, 4)
    out = aug.bilinear_sample(x, ys, xs)
    np.testing.assert_allclose(out[0], np.rot90(np.asarray(x[0]), 1, axes=(0, 1)), atol=1e-5)
    # The rotate op with the same angle goes through the same path.
    np.testing.assert_allclose(aug.apply_op("rotate", x, {"degrees": jnp.array([90.0])}), out, atol=1e-6)


def test_bilinear_half_pixel_shift_averages_neighbours_and_pads_with_zero():
    x = _images(8, (1, 4, 4, 1))
    theta = jnp.array([[[1.0, 0.0, 2.0 / 4 / 2], [0.0, 1.0, 0.0]]])  # +half a pixel in x
    ys, xs = aug.affine_grid(theta, 4, 4)
    np.testing.assert_allclose(xs[0, 0], [0.5, 1.5, 2.5, 3.5], atol=1e-6)
    out = np.asarray(aug.bilinear_sample(x, ys, xs))[0, ..., 0]
    img = np.asarray(x)[0, ..., 0]
    expected = np.concatenate([(img[:, :-1] + img[:, 1:]) / 2, img[:, -1:] / 2], axis=1)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_affine_resampling_matches_numpy_reference():
    x = _images(9, (3, 5, 6, 2))  # non-square, to catch swapped axes
    theta = np.stack([
        _rotation_theta(13.0),
        np.array([[1.15, 0.0, 0.0], [0.0, 0.85, 0.0]]),
        np.array([[0.9, 0.3, 0.21], [-0.2, 1.1, -0.33]]),
    ])
    ys, xs = aug.affine_grid(jnp.asarray(theta, jnp.float32), 5, 6)
    out = aug.bilinear_sample(x, ys, xs)
    np.testing.assert_allclose(out, _reference_affine(x, theta), atol=1e-5)


def _dsa_thetas(op, params):
    """The reference code's theta per sample: rand_scale [[sx, 0, 0], [0, sy, 0]], rand_rotate
    [[cos, -sin, 0], [sin, cos, 0]] (degrees to radians)."""
    if op == "scale":
        return np.stack(
            [
                np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0]])
                for sx, sy in zip(
                    np.asarray(params["scale_x"], np.float64), np.asarray(params["scale_y"], np.float64), strict=True
                )
            ]
        )
    return np.stack([_rotation_theta(d) for d in np.asarray(params["degrees"], np.float64)])


def test_align_corners_reference_is_torch_align_corners_true():
    """The reference's own convention: a translation of 2 / (W - 1) in normalised units is one pixel exactly
    (align_corners=False would make it (W - 1) / W of a pixel, a blend of two columns), and the identity
    theta returns the image."""
    x = _images(24, (1, 5, 6, 2))
    one_pixel = np.array([[[1.0, 0.0, 2.0 / (6 - 1)], [0.0, 1.0, 0.0]]])
    shifted = _torch_align_corners_resample(x, one_pixel)
    np.testing.assert_allclose(shifted[:, :, :-1], np.asarray(x)[:, :, 1:], atol=1e-12)  # out[.., j] = in[.., j + 1]
    np.testing.assert_array_equal(shifted[:, :, -1], 0.0)  # sampled beyond the border: zero padding
    identity = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    np.testing.assert_allclose(_torch_align_corners_resample(x, identity), x, atol=1e-12)


@pytest.mark.parametrize("op", ["scale", "rotate"])
@pytest.mark.parametrize("side", [8, 7])
def test_scale_and_rotate_ops_resample_like_the_reference_code(op, side):
    """The ops against PyTorch's align_corners=True resampling (the DSA reference code's), on square images
    (every dataset here): drawn parameters plus the extremes of the ranges."""
    params = aug.sample_params(jax.random.key(11 if op == "scale" else 12), op, 6, (side, side, 3))
    if op == "scale":
        params = {"scale_x": params["scale_x"].at[:2].set(jnp.array([1 / 1.2, 1.2])),
                  "scale_y": params["scale_y"].at[:2].set(jnp.array([1.2, 1 / 1.2]))}
    else:
        params = {"degrees": params["degrees"].at[:2].set(jnp.array([-15.0, 15.0]))}
    x = _images(10, (6, side, side, 3))
    out = np.asarray(aug.apply_op(op, x, params))
    assert np.max(np.abs(out - np.asarray(x))) > 0.1  # a real resampling, not the identity
    np.testing.assert_allclose(out, _torch_align_corners_resample(x, _dsa_thetas(op, params)), atol=1e-5)


@pytest.mark.xfail(strict=True, reason=(
    "known deviation: on a non-square image the reference code's align_corners=True rotation mixes the axes "
    "with (W - 1) / (H - 1), the package's affine_grid (align_corners=False centres) with W / H; "
    "square images (all datasets here) agree exactly"))
def test_rotate_op_on_a_non_square_image_resamples_like_the_reference_code():
    params = {"degrees": jnp.array([-15.0, 10.0])}
    x = _images(25, (2, 6, 9, 2))
    out = np.asarray(aug.apply_op("rotate", x, params))
    np.testing.assert_allclose(out, _torch_align_corners_resample(x, _dsa_thetas("rotate", params)), atol=1e-5)


def test_color_matches_numpy_brightness_saturation_contrast():
    x = _images(13)
    params = aug.sample_params(jax.random.key(14), "color", 4, (8, 8, 3))
    out = np.asarray(aug.apply_op("color", x, params))
    xn = np.asarray(x, np.float64)
    b, s, c = (np.asarray(params[n], np.float64)[:, None, None, None]
               for n in ("brightness", "saturation", "contrast"))
    y = xn + b
    y = (y - y.mean(axis=3, keepdims=True)) * s + y.mean(axis=3, keepdims=True)
    y = (y - y.mean(axis=(1, 2, 3), keepdims=True)) * c + y.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out, y, atol=1e-5)


def test_saturation_is_a_no_op_on_grayscale():
    x = _images(15, (4, 8, 8, 1))
    ones = jnp.ones(4)
    params = {"brightness": jnp.zeros(4), "contrast": ones, "saturation": jnp.array([0.0, 0.5, 1.7, 2.0])}
    np.testing.assert_allclose(aug.apply_op("color", x, params), x, atol=1e-6)


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("op,field,low,high", [
    ("scale", "scale_x", 1 / 1.2, 1.2),
    ("scale", "scale_y", 1 / 1.2, 1.2),
    ("rotate", "degrees", -15.0, 15.0),
    ("color", "brightness", -0.5, 0.5),
    ("color", "saturation", 0.0, 2.0),
    ("color", "contrast", 0.5, 1.5),
    ("crop", "shift_x", -2, 2),  # round(16 / 8)
    ("crop", "shift_y", -2, 2),
    ("cutout", "centre_x", 0, 16),  # even size 8: centres 0..16
    ("cutout", "centre_y", 0, 16),
])
def test_parameter_ranges_are_respected_and_covered(op, field, low, high):
    values = np.asarray(aug.sample_params(jax.random.key(16), op, 4000, (16, 16, 3))[field])
    assert values.min() >= low and values.max() <= high
    if np.issubdtype(values.dtype, np.integer):
        assert set(values.tolist()) == set(range(low, high + 1))
    else:
        span = high - low
        assert values.min() < low + 0.01 * span and values.max() > high - 0.01 * span
        assert abs(values.mean() - (low + high) / 2) < 0.03 * span


def test_crop_and_cutout_ranges_follow_the_image_sides():
    params = aug.sample_params(jax.random.key(17), "crop", 2000, (8, 32))
    assert set(np.asarray(params["shift_y"]).tolist()) == {-1, 0, 1}
    assert set(np.asarray(params["shift_x"]).tolist()) == set(range(-4, 5))
    assert (aug.cutout_size(8), aug.cutout_size(7), aug.crop_max_shift(28)) == (4, 4, 4)
    odd = aug.sample_params(jax.random.key(18), "cutout", 2000, (6, 6))  # size 3, odd
    assert set(np.asarray(odd["centre_y"]).tolist()) == set(range(6))


def test_flip_probability_is_one_half():
    flips = np.asarray(aug.sample_params(jax.random.key(19), "flip", 4000, (8, 8, 1))["flip"])
    assert flips.dtype == bool and 0.46 < flips.mean() < 0.54


@pytest.mark.parametrize("op", aug.DSA_OPS)
def test_parameters_differ_across_samples_and_are_deterministic(op):
    first = aug.sample_params(jax.random.key(20), op, 32, (16, 16, 3))
    again = aug.sample_params(jax.random.key(20), op, 32, (16, 16, 3))
    other = aug.sample_params(jax.random.key(21), op, 32, (16, 16, 3))
    for field, values in first.items():
        assert values.shape == (32,)
        assert len(np.unique(np.asarray(values))) > 1, field
        np.testing.assert_array_equal(values, again[field])
    assert any(not np.array_equal(first[f], other[f]) for f in first)


# ----------------------------------------------------------------------------- op sequences


def test_choose_ops_draws_distinct_ops_in_varying_sets():
    keys = jax.random.split(jax.random.key(22), 300)
    chosen = np.asarray(jax.vmap(lambda key: aug.choose_ops(key, 6, 2))(keys))
    assert chosen.shape == (300, 2)
    assert np.all(chosen[:, 0] != chosen[:, 1]) and chosen.min() >= 0 and chosen.max() < 6
    assert len({tuple(row) for row in chosen}) == 30  # every ordered pair of 6 ops appears
    assert len({tuple(row) for row in np.asarray(
        jax.vmap(lambda key: aug.choose_ops(key, 6, 6))(keys))} ) > 100


def test_augment_applies_the_chosen_ops_in_order_with_fresh_params():
    """augment equals the documented composition: choose_ops(keys[0]) then step i with keys[i+1]."""
    x = _images(23, (4, 8, 8, 3))
    seen = set()
    for seed in range(6):
        rng = jax.random.key(seed)
        keys = jax.random.split(rng, 3)
        chosen = [aug.DSA_OPS[i] for i in np.asarray(aug.choose_ops(keys[0], 6, 2))]
        expected = x
        for step, op in enumerate(chosen):
            expected = aug.apply_op(op, expected, aug.sample_params(keys[step + 1], op, 4, (8, 8, 3)))
        np.testing.assert_allclose(aug.augment(rng, x, k=2), expected, atol=1e-6)
        seen.add(tuple(chosen))
    assert len(seen) > 1


def test_single_flip_op_gives_flip_or_identity_per_sample():
    x = _images(24, (16, 8, 8, 2))
    out = np.asarray(aug.augment(jax.random.key(25), x, ops=("flip",), k=1))
    xn = np.asarray(x)
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, xn, strict=True)]
    kept = [np.array_equal(o, i) for o, i in zip(out, xn, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # exactly one of the two
    assert any(flipped) and any(kept)


def test_k_zero_is_identity():
    x = _images(26)
    assert aug.augment(jax.random.key(0), x, k=0) is x


def test_augment_is_deterministic_per_rng():
    x = _images(27)
    a = aug.augment(jax.random.key(28), x, k=2)
    np.testing.assert_array_equal(a, aug.augment(jax.random.key(28), x, k=2))
    assert not np.array_equal(a, aug.augment(jax.random.key(29), x, k=2))
    # Raw uint32 keys work too.
    np.testing.assert_array_equal(aug.augment(jax.random.PRNGKey(1), x, k=2),
                                  aug.augment(jax.random.PRNGKey(1), x, k=2))


def test_shared_params_transform_every_sample_alike():
    x = jnp.broadcast_to(_images(30, (1, 8, 8, 3)), (5, 8, 8, 3))
    shared = np.asarray(aug.augment(jax.random.key(31), x, ops=("color", "rotate"), k=2, per_sample=False))
    per_sample = np.asarray(aug.augment(jax.random.key(31), x, ops=("color", "rotate"), k=2))
    assert all(np.array_equal(shared[0], s) for s in shared[1:])
    assert not np.allclose(per_sample[0], per_sample[1])


def test_grayscale_input_works_through_all_ops():
    x = _images(32, (4, 8, 8, 1))
    out = aug.augment(jax.random.key(33), x, k=6)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert np.all(np.isfinite(out)) and not np.allclose(out, x)


# ----------------------------------------------------------------------------- siamese


def test_siamese_per_sample_applies_identical_params_to_both_batches():
    x = _images(34, (4, 8, 8, 3))
    rng = jax.random.key(35)
    out_a, out_b = aug.augment_siamese(rng, x, x + 0.0, k=2)
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(out_a, aug.augment(rng, x, k=2))


def test_siamese_shared_params_work_across_batch_sizes():
    real = _images(36, (5, 8, 8, 3))
    syn = real[:2]
    out_real, out_syn = aug.augment_siamese(jax.random.key(37), real, syn, ops=("crop", "scale"),
                                            k=2, per_sample=False)
    assert out_real.shape == real.shape and out_syn.shape == syn.shape
    np.testing.assert_array_equal(out_real[:2], out_syn)
    assert not np.allclose(out_syn, syn)


# ----------------------------------------------------------------------------- jit and grad


def test_jit_and_grad_through_augment():
    x = _images(38, (4, 8, 8, 3))
    weights = _images(39, (4, 8, 8, 3))

    @jax.jit
    def loss_grad(images, rng):
        return jax.grad(lambda im: jnp.sum(aug.augment(rng, im, k=2) * weights))(images)

    for seed in range(3):
        grad = np.asarray(loss_grad(x, jax.random.key(seed)))
        assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_no_retrace_across_rng_values():
    x = _images(40, (2, 8, 8, 3))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(rng, images):
        return aug.augment(rng, images, k=2)

    outs = [np.asarray(step(jax.random.key(seed), x)) for seed in range(5)]
    assert len({o.tobytes() for o in outs}) > 1


# ----------------------------------------------------------------------------- error paths


def test_unknown_op_in_augment_lists_allowed_ops():
    with pytest.raises(ValueError, match="unknown op 'blur'.*'color', 'crop'"):
        aug.augment(jax.random.key(0), _images(0), ops=("flip", "blur"))


def test_unknown_op_in_sample_params():
    with pytest.raises(ValueError, match="sample_params: unknown op 'zoom'"):
        aug.sample_params(jax.random.key(0), "zoom", 2, (8, 8, 3))


def test_unknown_op_in_apply_op():
    with pytest.raises(ValueError, match="apply_op: unknown op 'zoom'"):
        aug.apply_op("zoom", _images(0), {})


@pytest.mark.parametrize("k", [7, -1])
def test_k_out_of_range(k):
    with pytest.raises(ValueError, match=r"k must be in \[0, len\(ops\)\] = \[0, 6\]"):
        aug.augment(jax.random.key(0), _images(0), k=k)


def test_k_must_be_an_int():
    with pytest.raises(ValueError, match="k must be a Python int"):
        aug.augment(jax.random.key(0), _images(0), k=1.0)


def test_repeated_ops_rejected():
    with pytest.raises(ValueError, match="must not repeat"):
        aug.augment(jax.random.key(0), _images(0), ops=("flip", "flip"))


def test_ops_given_as_a_string_rejected():
    with pytest.raises(ValueError, match="sequence of op names"):
        aug.augment(jax.random.key(0), _images(0), ops="flip")


def test_images_must_be_nhwc():
    with pytest.raises(ValueError, match=r"augment: images must be an NHWC batch.*\(8, 8, 3\)"):
        aug.augment(jax.random.key(0), jnp.zeros((8, 8, 3)))


def test_images_must_be_floating():
    with pytest.raises(ValueError, match="floating values, got dtype int32"):
        aug.augment(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.int32))


def test_apply_op_wrong_param_keys():
    with pytest.raises(ValueError, match=r"params of op 'crop' must be a dict with keys \['shift_x', 'shift_y'\]"):
        aug.apply_op("crop", _images(0), {"shift_x": jnp.zeros(4, jnp.int32)})


def test_apply_op_wrong_param_batch():
    with pytest.raises(
        ValueError, match=r"params\['degrees'\] of op 'rotate' must have shape \(4,\) or \(1,\), got \(3,\)"
    ):
        aug.apply_op("rotate", _images(0), {"degrees": jnp.zeros(3)})


@pytest.mark.parametrize("batch_size", [0, 2.0, True])
def test_sample_params_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        aug.sample_params(jax.random.key(0), "flip", batch_size, (8, 8, 3))


@pytest.mark.parametrize("image_shape", [(8,), (8, 0, 3), (1, 8, 8, 3), (8.0, 8.0), 8])
def test_sample_params_bad_image_shape(image_shape):
    with pytest.raises(ValueError, match=r"image_shape must be \(H, W\) or \(H, W, C\)"):
        aug.sample_params(jax.random.key(0), "crop", 2, image_shape)


def test_siamese_per_sample_needs_equal_batch_sizes():
    with pytest.raises(ValueError, match="batch sizes must agree, got 4 and 2"):
        aug.augment_siamese(jax.random.key(0), _images(0), _images(0)[:2])


def test_siamese_needs_equal_image_shapes():
    with pytest.raises(ValueError, match=r"same \(H, W, C\), got \(8, 8, 3\) and \(8, 8, 1\)"):
        aug.augment_siamese(jax.random.key(0), _images(0), _images(0, (4, 8, 8, 1)), per_sample=False)


def test_siamese_empty_batch_rejected():
    with pytest.raises(ValueError, match="at least one image"):
        aug.augment_siamese(jax.random.key(0), _images(0), jnp.zeros((0, 8, 8, 3)), per_sample=False)


def test_augment_empty_batch_rejected():
    with pytest.raises(ValueError, match="at least one image"):
        aug.augment(jax.random.key(0), jnp.zeros((0, 8, 8, 3)))


def test_affine_grid_bad_theta():
    with pytest.raises(ValueError, match=r"theta must have shape \(B, 2, 3\), got \(2, 3\)"):
        aug.affine_grid(jnp.zeros((2, 3)), 4, 4)


def test_bilinear_sample_bad_coordinates():
    ys = jnp.zeros((4, 8, 8))
    with pytest.raises(ValueError, match="ys and xs must both be"):
        aug.bilinear_sample(_images(0), ys, jnp.zeros((4, 8, 7)))


def test_affine_grid_bad_size():
    with pytest.raises(ValueError, match=r"affine_grid: image_shape must be \(H, W\)"):
        aug.affine_grid(jnp.zeros((1, 2, 3)), 0, 4)


def test_op_must_be_a_string():
    with pytest.raises(ValueError, match=r"unknown op \['flip'\]"):
        aug.apply_op(["flip"], _images(0), {"flip": jnp.zeros(4, bool)})
