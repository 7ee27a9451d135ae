"""From config to arrays: real subsets and distilled sets share the test split's transform."""
import numpy as np
import pytest

from distill_jax import config as config_lib
from distill_jax.data import pipeline, preprocess
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
