"""`distill-jax show`: a set drawn in display pixels, its whitening undone with the transform
fitted on the matching real split."""
import numpy as np
import pytest
from PIL import Image

from distill_jax import cli
from distill_jax.data import datasets, grid, preprocess
from distill_jax.formats.distilled import DistilledSet, save_distilled
from distill_jax.report import show


def _real_npz(folder, n_per_class=6, classes=3, side=6):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), n_per_class)
    images = rng.integers(0, 256, size=(len(labels), side, side, 3), dtype=np.uint8)
    np.savez(folder / "train.npz", image=images, label=labels)
    return images, labels


def test_show_undoes_zca_with_the_transform_fitted_on_the_real_split(tmp_path):
    real_images, real_labels = _real_npz(tmp_path)
    zca = preprocess.fit("zca_mtt", datasets.to_float(real_images))
    picked = np.array([0, 1, 6, 12, 13])  # 2, 1 and 2 images of classes 0, 1, 2
    whitened = np.asarray(zca.apply(datasets.to_float(real_images[picked])), np.float32)
    save_distilled(DistilledSet(whitened, real_labels[picked], 3, "zca_mtt", {"source": "test"}), tmp_path / "set.npz")
    out = tmp_path / "grid.png"
    assert cli.main(["show", str(tmp_path / "set.npz"), "--out", str(out), "--dataset", "npz",
                     "--data-dir", str(tmp_path / "train.npz")]) == 0
    drawn = np.asarray(Image.open(out))
    expected = grid.image_grid(datasets.to_float(real_images[picked]), real_labels[picked], 3,
                               class_names=["0", "1", "2"])
    np.testing.assert_allclose(drawn.astype(int), expected.astype(int), atol=1)  # the original pixels again


def test_learned_labels_get_a_heatmap(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.normal(size=(4, 3)).astype(np.float32)
    dset = DistilledSet(rng.uniform(size=(4, 6, 6, 3)).astype(np.float32), labels, 3, "none", {"source": "test"})
    save_distilled(dset, tmp_path / "set.npz")
    shown = show.show_set(tmp_path / "set.npz", tmp_path / "g.png")
    assert shown["label_kind"] == "learned" and (tmp_path / "g_labels.png").is_file()
    assert Image.open(tmp_path / "g.png").size[1] == 3 * 37 - 1  # 3 classes, 6 px enlarged x6 to 36, 1 px gaps


def test_a_set_of_unknown_shape_asks_for_its_dataset(tmp_path):
    dset = DistilledSet(np.zeros((3, 6, 6, 3), np.float32), np.arange(3), 3, "zca_mtt", {"source": "test"})
    save_distilled(dset, tmp_path / "set.npz")
    with pytest.raises(show.ShowError, match="no known dataset has images \\(6, 6, 3\\) and 3 classes; give --dataset"):
        show.show_set(tmp_path / "set.npz", tmp_path / "g.png")
