"""Preprocessing recipes against independent numpy computations (docs/method.md §4)."""
import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.data import preprocess
from distill_jax.data.preprocess import Preprocessing, PreprocessingError


def _images(n=50, h=4, w=4, c=3, seed=0):
    """Correlated pixels in [0, 1] with different channel statistics, so whitening has work to do."""
    rng = np.random.default_rng(seed)
    shared = rng.uniform(size=(n, h, w, 1))
    x = 0.6 * shared + 0.4 * rng.uniform(size=(n, h, w, c))
    x[..., 0] *= 0.5
    return x.astype(np.float32)


def _to_nchw_rows(x):
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1).astype(np.float64)


def _from_nchw_rows(rows, shape):
    h, w, c = shape
    return rows.reshape(-1, c, h, w).transpose(0, 2, 3, 1)


def _zca_svd(cov, reg):
    u, s, _ = np.linalg.svd(cov)
    return u @ np.diag(1.0 / np.sqrt(s + reg)) @ u.T


def _reference(recipe, train, x):
    """The recipes written out directly (NCHW flattening, SVD, np.cov), as in the publishers' code."""
    shape = train.shape[1:]
    if recipe == "none":
        return x.astype(np.float64)
    mean = train.astype(np.float64).mean(axis=(0, 1, 2))
    std = train.astype(np.float64).std(axis=(0, 1, 2))
    if recipe == "standardize":
        return (x - mean) / std
    if recipe == "zca_mtt":
        rows = _to_nchw_rows(train)
        w = _zca_svd(np.cov(rows, rowvar=False), 0.1)
        return _from_nchw_rows((_to_nchw_rows(x) - rows.mean(axis=0)) @ w, shape)

    def rows_of(images):
        rows = _to_nchw_rows((images - mean) / std)
        if recipe == "zca_kip":
            rows = rows - rows.mean(axis=1, keepdims=True)
            rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return rows

    rows = rows_of(train)
    cov = rows.T @ rows / len(rows)
    lam = 0.1 * np.trace(cov) / cov.shape[0]
    u, s, _ = np.linalg.svd(cov + lam * np.eye(len(cov)))
    w = u @ np.diag(s ** -0.5) @ u.T
    return _from_nchw_rows(rows_of(x) @ w, shape)


@pytest.mark.parametrize("recipe", preprocess.RECIPES)
def test_recipe_matches_independent_numpy(recipe):
    train, test = _images(seed=0), _images(n=7, seed=1)
    prep = preprocess.fit(recipe, train)
    out = prep.apply(test)
    assert out.dtype == np.float32
    chex.assert_shape(out, test.shape)
    np.testing.assert_allclose(out, _reference(recipe, train, test), rtol=1e-4, atol=1e-4)
    assert prep.recipe == recipe


def test_recipes_tuple_is_the_shared_contract():
    assert preprocess.RECIPES == ("none", "standardize", "zca_mtt", "zca_frepo", "zca_kip")


def test_standardize_stores_channel_statistics():
    train = _images()
    prep = preprocess.fit("standardize", train)
    np.testing.assert_allclose(prep.channel_mean, train.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(prep.channel_std, train.std(axis=(0, 1, 2)), rtol=1e-5)
    assert prep.zca_matrix is None
    assert prep.channel_mean.dtype == np.float32


@pytest.mark.parametrize("recipe", ["zca_mtt", "zca_frepo"])
def test_whitened_train_data_has_identity_covariance_with_tiny_eps(recipe):
    train = _images(n=400, h=2, w=2, c=3)  # d = 12 << N: full-rank covariance
    prep = preprocess.fit(recipe, train, zca_reg=1e-9)
    rows = prep.apply(train).reshape(len(train), -1).astype(np.float64)
    if recipe == "zca_mtt":
        cov = np.cov(rows, rowvar=False)  # the recipe's own (centred, unbiased) covariance
    else:
        cov = rows.T @ rows / len(rows)   # FRePo/KIP: uncentred second moment
    np.testing.assert_allclose(cov, np.eye(12), atol=2e-3)


def test_regulariser_shrinks_whitening():
    train = _images()
    small = preprocess.fit("zca_mtt", train, zca_reg=1e-3).apply(train)
    large = preprocess.fit("zca_mtt", train, zca_reg=1.0).apply(train)
    assert np.abs(large).max() < np.abs(small).max()


def test_flatten_order_mismatch_differs_consistent_order_matches_reference():
    train, test = _images(seed=0), _images(n=5, seed=3)
    reference = _reference("zca_mtt", train, test)
    fitted_nchw = preprocess.fit("zca_mtt", train, flatten_order="nchw")
    # The mistake: a matrix fitted on NCHW rows applied to NHWC rows.
    mismatched = dataclasses.replace(fitted_nchw, flatten_order="nhwc").apply(test)
    assert np.abs(mismatched - reference).max() > 0.1
    np.testing.assert_allclose(fitted_nchw.apply(test), reference, rtol=1e-4, atol=1e-4)
    # Fitted and applied in NHWC order: a different matrix, the same images.
    fitted_nhwc = preprocess.fit("zca_mtt", train, flatten_order="nhwc")
    assert fitted_nhwc.flatten_order == "nhwc"
    np.testing.assert_allclose(fitted_nhwc.apply(test), reference, rtol=1e-4, atol=1e-4)
    h, w, c = train.shape[1:]
    nhwc_of_nchw = np.arange(h * w * c).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
    np.testing.assert_allclose(fitted_nhwc.zca_matrix, fitted_nchw.zca_matrix[np.ix_(nhwc_of_nchw, nhwc_of_nchw)],
                               rtol=1e-4, atol=1e-5)
    assert np.abs(fitted_nhwc.zca_matrix - fitted_nchw.zca_matrix).max() > 0.1


@pytest.mark.parametrize("recipe", ["none", "standardize", "zca_mtt", "zca_frepo"])
def test_inverse_undoes_apply(recipe):
    train, test = _images(seed=0), _images(n=6, seed=2)
    prep = preprocess.fit(recipe, train)
    np.testing.assert_allclose(prep.inverse(prep.apply(test)), test, atol=2e-4)


def test_kip_inverse_is_approximate_with_training_norm():
    train, test = _images(seed=0), _images(n=6, seed=2)
    prep = preprocess.fit("zca_kip", train)
    mean, std = train.mean(axis=(0, 1, 2)), train.std(axis=(0, 1, 2))
    centred = lambda z: z - z.mean(axis=(1, 2, 3), keepdims=True)  # noqa: E731
    train_norm = np.linalg.norm(centred((train - mean) / std).reshape(len(train), -1), axis=1).mean()
    assert prep.image_norm == pytest.approx(train_norm, rel=1e-5)
    z = centred((test - mean) / std)
    unit = z / np.linalg.norm(z.reshape(len(z), -1), axis=1)[:, None, None, None]
    expected = unit * train_norm * std + mean  # own mean dropped, norm replaced by the training average
    np.testing.assert_allclose(prep.inverse(prep.apply(test)), expected, atol=2e-4)


def test_apply_accepts_jax_arrays_and_jit():
    train, test = _images(seed=0), _images(n=4, seed=5)
    prep = preprocess.fit("zca_frepo", train)
    expected = prep.apply(test)
    out = jax.jit(prep.apply)(jnp.asarray(test))
    assert isinstance(out, jax.Array) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("recipe", preprocess.RECIPES)
def test_to_dict_from_dict_round_trip(recipe):
    train, test = _images(seed=0), _images(n=3, seed=4)
    prep = preprocess.fit(recipe, train)
    record = prep.to_dict()
    meta = json.loads(json.dumps(record["meta"]))  # meta is JSON-able
    back = Preprocessing.from_dict({"meta": meta, "arrays": record["arrays"]})
    assert (back.recipe, back.image_shape, back.flatten_order, back.zca_reg) == \
        (prep.recipe, prep.image_shape, prep.flatten_order, prep.zca_reg)
    for field in ("channel_mean", "channel_std", "zca_mean", "zca_matrix"):
        a, b = getattr(prep, field), getattr(back, field)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.apply(test), prep.apply(test))


def test_save_load_round_trip_leaves_no_temporary_file(tmp_path):
    train, test = _images(seed=0), _images(n=3, seed=4)
    prep = preprocess.fit("zca_kip", train, flatten_order="nhwc")
    path = prep.save(tmp_path / "sub" / "prep.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["prep.npz"]
    back = preprocess.load(path)
    assert back.flatten_order == "nhwc" and back.image_norm == prep.image_norm
    np.testing.assert_array_equal(back.zca_matrix, prep.zca_matrix)
    np.testing.assert_array_equal(back.apply(test), prep.apply(test))


def test_npz_entries_embed_beside_other_arrays(tmp_path):
    prep = preprocess.fit("standardize", _images())
    path = tmp_path / "distilled.npz"
    np.savez(path, image=np.zeros((2, 4, 4, 3), np.float32), **prep.to_npz_entries())
    with np.load(path, allow_pickle=False) as npz:
        back = Preprocessing.from_npz_entries(npz)
    np.testing.assert_array_equal(back.channel_std, prep.channel_std)


def test_fit_unknown_recipe_raises():
    with pytest.raises(PreprocessingError, match="unknown recipe 'zca'"):
        preprocess.fit("zca", _images())


def test_apply_wrong_shape_raises():
    prep = preprocess.fit("standardize", _images())
    with pytest.raises(PreprocessingError, match=r"expected images \(N, 4, 4, 3\).*\(2, 4, 4, 1\)"):
        prep.apply(np.zeros((2, 4, 4, 1), np.float32))


def test_fit_rejects_uint8_images():
    with pytest.raises(PreprocessingError, match="to_float"):
        preprocess.fit("standardize", (_images() * 255).astype(np.uint8))


def test_fit_rejects_pixels_outside_unit_range():
    with pytest.raises(PreprocessingError, match=r"\[0, 1\]"):
        preprocess.fit("zca_mtt", _images() * 255.0)


def test_fit_rejects_non_nhwc_input():
    with pytest.raises(PreprocessingError, match=r"\(N, H, W, C\)"):
        preprocess.fit("standardize", _images().reshape(50, -1))


def test_fit_rejects_constant_channel():
    x = _images()
    x[..., 1] = 0.5
    with pytest.raises(PreprocessingError, match=r"channel\(s\) \[1\] are constant"):
        preprocess.fit("zca_frepo", x)


def test_fit_singular_covariance_without_regulariser_raises():
    x = np.repeat(_images(n=10, h=2, w=2, c=1), 3, axis=-1)  # identical channels: rank-deficient covariance
    with pytest.raises(PreprocessingError, match="singular"):
        preprocess.fit("zca_mtt", x, zca_reg=0.0)


def test_constructor_checks_arrays_for_recipe():
    with pytest.raises(PreprocessingError, match="zca_matrix: recipe 'zca_mtt' needs it"):
        Preprocessing("zca_mtt", (4, 4, 3), zca_mean=np.zeros(48))
    with pytest.raises(PreprocessingError, match=r"channel_mean: expected shape \(3,\)"):
        Preprocessing("standardize", (4, 4, 3), channel_mean=np.zeros(4), channel_std=np.ones(3))


def test_from_dict_rejects_foreign_record():
    record = preprocess.fit("none", _images()).to_dict()
    record["meta"]["format"] = "something_else"
    with pytest.raises(PreprocessingError, match="meta.format"):
        Preprocessing.from_dict(record)


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        preprocess.load(tmp_path / "nope.npz")


def test_load_file_without_meta_raises(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, image=np.zeros(3))
    with pytest.raises(PreprocessingError, match=r"other.npz: no entry 'meta'"):
        preprocess.load(path)


def test_fitted_on_provenance_round_trips_and_is_checked(tmp_path):
    x = np.random.default_rng(0).random((20, 4, 4, 3)).astype(np.float32)
    origin = {"dataset": "cifar10_jpeg", "split": "train", "images_sha256": "ab" * 32}
    prep = dataclasses.replace(preprocess.fit("standardize", x), fitted_on=origin)
    assert preprocess.load(prep.save(tmp_path / "p.npz")).fitted_on == origin
    assert preprocess.Preprocessing.from_dict(prep.to_dict()).fitted_on == origin
    assert "fitted_on" not in preprocess.fit("standardize", x).to_dict()["meta"]  # older files stay as they were
    with pytest.raises(preprocess.PreprocessingError, match="fitted_on"):
        dataclasses.replace(prep, fitted_on={"datasett": "x"})
    with pytest.raises(preprocess.PreprocessingError, match="fitted_on"):
        dataclasses.replace(prep, fitted_on={"dataset": 3})
