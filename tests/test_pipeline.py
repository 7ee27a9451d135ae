"""From config to arrays: real subsets and distilled sets share the test split's transform."""
import dataclasses

import numpy as np
import pytest

from distill_jax import config as config_lib
from distill_jax.data import pipeline, preprocess
from distill_jax.errors import ConfigError
from distill_jax.formats import distilled


@pytest.fixture
def npz_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_JAX_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 21)):
        labels = np.repeat(np.arange(3), n // 3)
        images = rng.integers(0, 256, size=(n, 6, 6, 3), dtype=np.uint8)
        np.savez(tmp_path / f"{split}.npz", image=images, label=labels)
    return tmp_path


def _data_cfg(root, **over):
    cfg = config_lib.default_config().data
    cfg.dataset = "npz"
    cfg.data_dir = str(root)
    cfg.per_class = 4
    for k, v in over.items():
        cfg[k] = v
    return cfg


def test_real_subset_standardized_with_train_statistics(npz_dataset):
    data = pipeline.load_training_data(_data_cfg(npz_dataset))
    train = np.load(npz_dataset / "train.npz")
    test = np.load(npz_dataset / "test.npz")
    x = train["image"].astype(np.float64) / 255
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    np.testing.assert_allclose(data.test_images, (test["image"] / 255 - mean) / std, rtol=1e-4, atol=1e-4)
    assert data.train_images.shape == (12, 6, 6, 3)
    assert np.bincount(data.train_labels).tolist() == [4, 4, 4]
    assert data.num_classes == 3


def test_fitted_transform_is_cached_and_reused(npz_dataset):
    pipeline.load_training_data(_data_cfg(npz_dataset, preprocessing="zca_mtt"))
    cached = list((npz_dataset / "cache" / "preprocessing").glob("zca_mtt-*.npz"))
    assert len(cached) == 1
    first = preprocess.load(cached[0])
    again = pipeline.load_training_data(_data_cfg(npz_dataset, preprocessing="zca_mtt"))
    np.testing.assert_array_equal(again.preprocessing.zca_matrix, first.zca_matrix)


def test_damaged_cache_entry_is_refitted(npz_dataset):
    a = pipeline.load_training_data(_data_cfg(npz_dataset, preprocessing="zca_mtt"))
    cached = next((npz_dataset / "cache" / "preprocessing").glob("zca_mtt-*.npz"))
    cached.write_bytes(b"garbage")
    b = pipeline.load_training_data(_data_cfg(npz_dataset, preprocessing="zca_mtt"))
    np.testing.assert_allclose(a.test_images, b.test_images, rtol=1e-5, atol=1e-6)


def test_distilled_set_keeps_its_space_and_soft_labels(npz_dataset, tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(6, 3)).astype(np.float32)
    dset = distilled.DistilledSet(images=rng.normal(size=(6, 6, 6, 3)).astype(np.float32), labels=vectors,
                                  num_classes=3, preprocessing="zca_mtt", provenance={"format": "test"})
    path = distilled.save_distilled(dset, tmp_path / "set.npz")
    data = pipeline.load_training_data(_data_cfg(npz_dataset, source="distilled", distilled_path=str(path),
                                                 label_temperature=0.3))
    np.testing.assert_array_equal(data.train_images, dset.images)  # already in the distiller's space
    z = vectors / 0.3
    expected = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(data.train_labels, expected / expected.sum(1, keepdims=True), rtol=1e-5)
    assert data.preprocessing.recipe == "zca_mtt"


def test_distilled_set_of_another_dataset_is_refused(npz_dataset, tmp_path):
    dset = distilled.DistilledSet(images=np.zeros((4, 8, 8, 3), np.float32), labels=np.arange(4) % 3,
                                  num_classes=3, preprocessing="none", provenance={"format": "test"})
    path = distilled.save_distilled(dset, tmp_path / "set.npz")
    with pytest.raises(ValueError, match="images of shape"):
        pipeline.load_training_data(_data_cfg(npz_dataset, source="distilled", distilled_path=str(path)))


# ---- a saved fitted transform (data.preprocessing_path): a machine without the training split


def _saved_transform(npz_dataset, tmp_path, recipe="zca_mtt", dataset="npz"):
    train = np.load(npz_dataset / "train.npz")["image"]
    prep = pipeline.fitted_preprocessing(recipe, train, dataset=dataset)
    return prep, prep.save(tmp_path / "saved" / f"{recipe}.npz")


def _distilled_set(tmp_path, recipe="zca_mtt"):
    rng = np.random.default_rng(1)
    dset = distilled.DistilledSet(images=rng.normal(size=(6, 6, 6, 3)).astype(np.float32), labels=np.arange(6) % 3,
                                  num_classes=3, preprocessing=recipe, provenance={"format": "test"})
    return distilled.save_distilled(dset, tmp_path / "set.npz")


def test_fitted_transform_records_what_it_was_fitted_on(npz_dataset, tmp_path):
    prep, path = _saved_transform(npz_dataset, tmp_path)
    assert prep.fitted_on["dataset"] == "npz" and prep.fitted_on["split"] == "train"
    assert len(prep.fitted_on["images_sha256"]) == 64
    assert preprocess.load(path).fitted_on == prep.fitted_on  # kept by save/load


def test_saved_transform_replaces_the_fit_and_the_training_split(npz_dataset, tmp_path):
    prep, path = _saved_transform(npz_dataset, tmp_path)
    fitted = pipeline.load_training_data(_data_cfg(npz_dataset, source="distilled",
                                                   distilled_path=str(_distilled_set(tmp_path))))
    (npz_dataset / "train.npz").unlink()  # a distilled set's run no longer needs the split
    saved = pipeline.load_training_data(_data_cfg(npz_dataset, source="distilled", preprocessing_path=str(path),
                                                  distilled_path=str(_distilled_set(tmp_path))))
    np.testing.assert_array_equal(saved.test_images, fitted.test_images)
    np.testing.assert_array_equal(saved.preprocessing.zca_matrix, prep.zca_matrix)
    assert saved.num_classes == 3


def test_saved_transform_for_a_real_subset_is_checked_against_its_images(npz_dataset, tmp_path):
    _, path = _saved_transform(npz_dataset, tmp_path, recipe="standardize")
    data = pipeline.load_training_data(_data_cfg(npz_dataset, preprocessing_path=str(path)))
    assert data.preprocessing.recipe == "standardize"
    rng = np.random.default_rng(5)  # the same dataset name, other training images
    np.savez(npz_dataset / "train.npz", image=rng.integers(0, 256, size=(60, 6, 6, 3), dtype=np.uint8),
             label=np.repeat(np.arange(3), 20))
    with pytest.raises(preprocess.PreprocessingError, match=r"standardize\.npz.*other images"):
        pipeline.load_training_data(_data_cfg(npz_dataset, preprocessing_path=str(path)))


@pytest.mark.parametrize("case, match", [
    ("recipe", r"zca_frepo\.npz.*holds a 'zca_frepo' transform, but this run needs 'zca_mtt'"),
    ("dataset", r"zca_mtt\.npz.*fitted on dataset 'cifar100'.*needs data.dataset 'npz'"),
    ("shape", r"zca_mtt\.npz.*fitted on images of shape \(4, 4, 3\)"),
    ("missing", r"nowhere\.npz.*no such file"),
])
def test_saved_transform_that_does_not_fit_the_run_names_the_file(npz_dataset, tmp_path, case, match):
    if case == "recipe":
        _, path = _saved_transform(npz_dataset, tmp_path, recipe="zca_frepo")
    elif case == "dataset":
        _, path = _saved_transform(npz_dataset, tmp_path, dataset="cifar100")
    elif case == "shape":
        prep = preprocess.fit("zca_mtt", np.random.default_rng(0).random((40, 4, 4, 3)))
        path = prep.save(tmp_path / "zca_mtt.npz")
    else:
        path = tmp_path / "nowhere.npz"
    cfg = _data_cfg(npz_dataset, source="distilled", preprocessing_path=str(path),
                    distilled_path=str(_distilled_set(tmp_path)))
    with pytest.raises(preprocess.PreprocessingError, match=match):
        pipeline.load_training_data(cfg)


def test_saved_transform_without_provenance_is_used_with_a_warning(npz_dataset, tmp_path, caplog):
    prep, _ = _saved_transform(npz_dataset, tmp_path)
    path = dataclasses.replace(prep, fitted_on=None).save(tmp_path / "old.npz")
    data = pipeline.load_training_data(_data_cfg(npz_dataset, source="distilled", preprocessing_path=str(path),
                                                 distilled_path=str(_distilled_set(tmp_path))))
    assert data.preprocessing.fitted_on is None
    assert "records no dataset" in caplog.text


def test_config_refuses_a_missing_saved_transform(tmp_path):
    c = config_lib.default_config()
    c.data.preprocessing_path = str(tmp_path / "gone.npz")
    with pytest.raises(ConfigError, match=r"data.preprocessing_path.*gone\.npz.*no such file"):
        config_lib.validate(c)
    c.data.preprocessing_path = ""
    config_lib.validate(c)
