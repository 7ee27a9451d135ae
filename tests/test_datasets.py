"""Dataset sources behind load_dataset, and class-balanced subsets (docs/method.md §4)."""
import gzip
import pathlib
import struct

import chex
import numpy as np
import pytest
from PIL import Image

from distill_jax.data import datasets
from distill_jax.data.datasets import DataFormatError, DataNotFoundError, Dataset, DatasetInfo

# --------------------------------------------------------------------------- helpers


def _write_idx(path: pathlib.Path, array: np.ndarray, *, compress: bool):
    """IDX written independently of the reader: big-endian magic (0, 0, 0x08, ndim), dims, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def _idx_split(folder: pathlib.Path, prefix: str, n: int, seed: int, *, compress: bool, num_classes=10):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).astype(np.uint8)
    _write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress=compress)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress=compress)
    return images, labels


def _toy_dataset(counts, seed=0):
    """Images whose first pixel holds their index, labels shuffled, `counts[c]` of class c."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int64)
    images = np.zeros((len(labels), 2, 2, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels))
    info = DatasetInfo("toy", len(counts), tuple(f"c{i}" for i in range(len(counts))), (2, 2, 1), "train", "test")
    return Dataset(images, labels, info)


def _save_image(path: pathlib.Path, pixels: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path)


# --------------------------------------------------------------------------- containers


def test_to_float_scales_uint8_to_unit_interval():
    out = datasets.to_float(np.array([[0, 51, 255]], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]], rtol=1e-6)


def test_to_float_rejects_float_input():
    with pytest.raises(TypeError, match="uint8"):
        datasets.to_float(np.zeros(3, np.float32))


def test_dataset_rejects_float_images():
    info = DatasetInfo("x", 2, ("a", "b"), (2, 2, 1), "train", "test")
    with pytest.raises(DataFormatError, match="images must be a uint8"):
        Dataset(np.zeros((1, 2, 2, 1), np.float32), np.zeros(1, np.int64), info)


def test_dataset_rejects_labels_out_of_range():
    info = DatasetInfo("x", 2, ("a", "b"), (2, 2, 1), "train", "test")
    with pytest.raises(DataFormatError, match=r"labels must lie in \[0, 2\)"):
        Dataset(np.zeros((1, 2, 2, 1), np.uint8), np.array([2], np.int64), info)


def test_unknown_dataset_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*cifar10_jpeg"):
        datasets.load_dataset("cifar11", "train")


def test_unknown_source_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'hdf5'"):
        datasets.load_dataset("mnist", "train", tmp_path, source="hdf5")


# --------------------------------------------------------------------------- IDX


def test_idx_gz_and_raw_files_load(tmp_path):
    train_images, train_labels = _idx_split(tmp_path, "train", 12, 0, compress=True)
    test_images, test_labels = _idx_split(tmp_path, "t10k", 5, 1, compress=False)
    train = datasets.load_dataset("mnist", "train", data_dir=tmp_path)
    test = datasets.load_dataset("mnist", "test", data_dir=tmp_path)
    chex.assert_shape(train.images, (12, 5, 4, 1))
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.images[..., 0], train_images)
    np.testing.assert_array_equal(train.labels, train_labels)
    np.testing.assert_array_equal(test.images[..., 0], test_images)
    np.testing.assert_array_equal(test.labels, test_labels)
    assert train.info == DatasetInfo("mnist", 10, tuple("0123456789"), (5, 4, 1), "train", "idx")


def test_fashion_mnist_from_explicit_dir_has_class_names(tmp_path):
    _idx_split(tmp_path, "t10k", 4, 2, compress=True)
    ds = datasets.load_dataset("fashion_mnist", "test", data_dir=tmp_path)
    assert ds.info.class_names[0] == "T-shirt/top" and ds.info.class_names[9] == "Ankle boot"


def test_idx_bad_magic_names_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x01\x02\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataFormatError, match="train-images-idx3-ubyte: bad magic 01020803"):
        datasets.read_idx(path)


def test_idx_unknown_type_code(tmp_path):
    path = tmp_path / "f.idx"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataFormatError, match="unknown type code 0x07"):
        datasets.read_idx(path)


def test_idx_truncated_payload(tmp_path):
    path = _write_idx(tmp_path / "f.idx", np.zeros((3, 2, 2), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataFormatError, match=r"f.idx: dimensions \(3, 2, 2\) need 12 bytes of data, found 11"):
        datasets.read_idx(path)


def test_idx_trailing_bytes(tmp_path):
    path = _write_idx(tmp_path / "f.idx", np.zeros((4,), np.uint8), compress=True)
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b"\x00"))
    with pytest.raises(DataFormatError, match="need 4 bytes of data, found 5"):
        datasets.read_idx(path)


def test_idx_header_shorter_than_dims(tmp_path):
    path = tmp_path / "f.idx"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 5))
    with pytest.raises(DataFormatError, match="promises 3 dimensions"):
        datasets.read_idx(path)


def test_idx_labels_file_with_image_dims_rejected(tmp_path):
    _idx_split(tmp_path, "train", 3, 0, compress=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((3, 2, 2), np.uint8), compress=False)
    with pytest.raises(DataFormatError, match=r"train-labels-idx1-ubyte: expected uint8 labels \(N,\)"):
        datasets.load_dataset("mnist", "train", data_dir=tmp_path)


def test_idx_count_mismatch(tmp_path):
    _idx_split(tmp_path, "train", 3, 0, compress=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((4,), np.uint8), compress=False)
    with pytest.raises(DataFormatError, match="3 images but 4 labels"):
        datasets.load_dataset("mnist", "train", data_dir=tmp_path)


def test_idx_labels_beyond_class_names(tmp_path):
    _idx_split(tmp_path, "train", 3, 0, compress=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 10], np.uint8), compress=False)
    with pytest.raises(DataFormatError, match=r"label 10 outside \[0, 10\)"):
        datasets.load_dataset("mnist", "train", data_dir=tmp_path)


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_dataset("fashion_mnist", "train", data_dir=tmp_path / "absent")


def test_fashion_mnist_missing_file_in_existing_dir(tmp_path):
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte.*apt-get install"):
        datasets.load_dataset("fashion_mnist", "train", data_dir=tmp_path)


def test_mnist_without_data_dir_says_to_pass_one():
    with pytest.raises(DataNotFoundError, match="pass data_dir"):
        datasets.load_dataset("mnist", "train")


def test_idx_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        datasets.load_dataset("mnist", "validation", data_dir=tmp_path)


def test_real_debian_fashion_mnist():
    if not (datasets.DEBIAN_FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"Debian dataset-fashion-mnist is not installed at {datasets.DEBIAN_FASHION_MNIST_DIR}")
    train = datasets.load_dataset("fashion_mnist", "train")
    test = datasets.load_dataset("fashion_mnist", "test")
    chex.assert_shape(train.images, (60000, 28, 28, 1))
    chex.assert_shape(test.images, (10000, 28, 28, 1))
    np.testing.assert_array_equal(train.class_counts(), np.full(10, 6000))
    np.testing.assert_array_equal(test.class_counts(), np.full(10, 1000))
    np.testing.assert_array_equal(test.labels[:8], [9, 2, 1, 1, 6, 1, 4, 6])  # the published file's first labels
    assert train.images.max() == 255 and train.images.min() == 0


# --------------------------------------------------------------------------- tensorflow-datasets


def test_tfds_not_prepared_says_how_to_prepare(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        datasets.load_dataset("cifar10", "train", data_dir=tmp_path, source="tfds")
    message = str(err.value)
    assert "not prepared" in message
    assert "pip install -e .[tfds-prepare]" in message
    assert "download_and_prepare()" in message and "'cifar10'" in message
    assert not any(tmp_path.rglob("*.array_record*"))  # nothing was downloaded or generated


def test_tfds_prepared_as_tfrecord_says_to_prepare_array_record(tmp_path):
    variant = tmp_path / "cifar10" / "3.0.2"
    variant.mkdir(parents=True)
    # What download_and_prepare() leaves by default: TFRecord files, unreadable without TensorFlow.
    (variant / "dataset_info.json").write_text(
        '{"name": "cifar10", "version": "3.0.2", "fileFormat": "tfrecord", "splits": [{"name": "train", '
        '"shardLengths": ["10"], "numBytes": "100", '
        '"filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}]}'
    )
    with pytest.raises(DataFormatError, match=r"(?s)cannot be read without TensorFlow.*file_format='array_record'"):
        datasets.load_dataset("cifar10", "train", data_dir=tmp_path, source="tfds")


def test_tfds_prefix_reads_through_data_source():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        ds = datasets.load_dataset("tfds:mnist", "train")
        via_source = datasets.load_dataset("fashion_mnist", "test", source="tfds")
    chex.assert_shape(ds.images, (6, 28, 28, 1))
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64
    assert ds.info.source == "tfds" and ds.info.num_classes == 10
    assert via_source.info.class_names[9] == "Ankle boot"


# --------------------------------------------------------------------------- npz


def test_npz_folder_and_file_paths(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 3, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "train.npz", image=images, label=labels, class_names=np.array(["a", "b", "c"]))
    by_dir = datasets.load_dataset("npz", "train", data_dir=tmp_path)
    by_file = datasets.load_dataset("npz", "ignored", data_dir=tmp_path / "train.npz")
    for ds in (by_dir, by_file):
        np.testing.assert_array_equal(ds.images, images)
        np.testing.assert_array_equal(ds.labels, labels)
        assert ds.info.class_names == ("a", "b", "c") and ds.info.image_shape == (3, 3, 3)


def test_npz_without_class_names_counts_classes(tmp_path):
    np.savez(tmp_path / "test.npz", image=np.zeros((2, 2, 2), np.uint8), label=np.array([0, 3]))
    ds = datasets.load_dataset("npz", "test", data_dir=tmp_path)
    assert ds.info.num_classes == 4 and ds.info.image_shape == (2, 2, 1)


def test_npz_missing_key_names_file(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 2, 2, 1), np.uint8), label=np.zeros(2, np.int64))
    with pytest.raises(DataFormatError, match=r"train.npz: no array 'image'"):
        datasets.load_dataset("npz", "train", data_dir=tmp_path)


def test_npz_float_images_rejected(tmp_path):
    np.savez(tmp_path / "train.npz", image=np.zeros((2, 2, 2, 1), np.float32), label=np.zeros(2, np.int64))
    with pytest.raises(DataFormatError, match="'image' must be uint8 NHWC"):
        datasets.load_dataset("npz", "train", data_dir=tmp_path)


def test_npz_soft_labels_rejected(tmp_path):
    np.savez(tmp_path / "train.npz", image=np.zeros((2, 2, 2, 1), np.uint8), label=np.zeros((2, 10), np.float32))
    with pytest.raises(DataFormatError, match="'label' must be integer class indices"):
        datasets.load_dataset("npz", "train", data_dir=tmp_path)


def test_cifar10_jpeg_missing_says_where(tmp_path):
    with pytest.raises(
        DataNotFoundError, match=r"cifar10_jpeg_train.npz not found.*in the data root \(\$DISTILL_JAX_DATA"
    ):
        datasets.load_dataset("cifar10_jpeg", "train", data_dir=tmp_path)


def test_data_root_comes_from_the_environment_else_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_JAX_DATA", str(tmp_path / "root"))
    assert datasets.data_root() == tmp_path / "root"
    np.savez(tmp_path / "root.npz", image=np.zeros((2, 4, 4, 3), np.uint8), label=np.array([0, 1]))
    (tmp_path / "root").mkdir()
    (tmp_path / "root.npz").rename(tmp_path / "root" / "cifar10_jpeg_test.npz")
    assert datasets.load_dataset("cifar10_jpeg", "test").images.shape == (2, 4, 4, 3)  # found in the data root
    monkeypatch.delenv("DISTILL_JAX_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert datasets.data_root() == tmp_path / "cache" / "distill_jax" / "data"


def test_shared_cifar10_jpeg(shared_data):
    test = datasets.load_dataset("cifar10_jpeg", "test")
    chex.assert_shape(test.images, (10000, 32, 32, 3))
    np.testing.assert_array_equal(test.class_counts(), np.full(10, 1000))
    assert test.info.class_names[0] == "airplane" and test.info.class_names[9] == "truck"
    same = datasets.load_dataset("cifar10_jpeg", "test", data_dir=shared_data)
    np.testing.assert_array_equal(same.labels, test.labels)


# --------------------------------------------------------------------------- Tiny-ImageNet


def _tiny_imagenet(root: pathlib.Path):
    """3 classes listed out of sorted order; class i has i+1 train images of constant value 40*(i+1)."""
    wnids = ["n03", "n01", "n02"]
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tbird\nn03\ttabby cat\nn99\tunused\n")
    for i, wnid in enumerate(wnids):
        for j in range(i + 1):
            value = 40 * (i + 1)
            _save_image(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", np.full((8, 8, 3), value, np.uint8))
    val_rows = []
    for k, wnid in enumerate(["n02", "n03", "n01", "n02"]):
        pixels = np.full((8, 8, 1), 200, np.uint8)  # grayscale JPEG, as some Tiny-ImageNet files are
        _save_image(root / "val" / "images" / f"val_{k}.JPEG", pixels)
        val_rows.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t7\t7")
    (root / "val" / "val_annotations.txt").write_text("\n".join(val_rows) + "\n")


def test_tiny_imagenet_wnids_order(tmp_path):
    _tiny_imagenet(tmp_path)
    train = datasets.load_dataset("tiny_imagenet", "train", data_dir=tmp_path)
    chex.assert_shape(train.images, (6, 8, 8, 3))
    assert train.info.class_names == ("tabby cat", "goldfish, Carassius auratus", "bird")
    np.testing.assert_array_equal(train.labels, [0, 1, 1, 2, 2, 2])
    np.testing.assert_allclose(train.images.mean(axis=(1, 2, 3)), [40, 80, 80, 120, 120, 120], atol=2)
    val = datasets.load_dataset("tiny_imagenet", "val", data_dir=tmp_path)
    chex.assert_shape(val.images, (4, 8, 8, 3))
    np.testing.assert_array_equal(val.labels, [2, 0, 1, 2])
    assert val.info.split == "val"


def test_tiny_imagenet_sorted_order_and_test_alias(tmp_path):
    _tiny_imagenet(tmp_path)
    val = datasets.load_dataset("tiny_imagenet", "test", data_dir=tmp_path, class_order="sorted")
    assert val.info.class_names == ("goldfish, Carassius auratus", "bird", "tabby cat")
    np.testing.assert_array_equal(val.labels, [1, 2, 0, 1])
    assert val.info.split == "val"


def test_tiny_imagenet_missing_wnids(tmp_path):
    with pytest.raises(DataNotFoundError, match="wnids.txt not found.*tiny-imagenet-200"):
        datasets.load_dataset("tiny_imagenet", "train", data_dir=tmp_path)


def test_tiny_imagenet_unknown_wnid_in_annotations(tmp_path):
    _tiny_imagenet(tmp_path)
    path = tmp_path / "val" / "val_annotations.txt"
    path.write_text(path.read_text() + "val_9.JPEG\tn77\t0\t0\t1\t1\n")
    with pytest.raises(DataFormatError, match="val_annotations.txt line 5"):
        datasets.load_dataset("tiny_imagenet", "val", data_dir=tmp_path)


def test_tiny_imagenet_bad_class_order(tmp_path):
    with pytest.raises(ValueError, match="class_order must be 'wnids' or 'sorted'"):
        datasets.load_dataset("tiny_imagenet", "train", data_dir=tmp_path, class_order="alpha")


# --------------------------------------------------------------------------- image folders


def test_image_folder_png_exact_and_sorted_classes(tmp_path):
    rng = np.random.default_rng(0)
    expected = {}
    for cls in ("zebra", "ant"):
        for j in range(2):
            pixels = rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)
            _save_image(tmp_path / "train" / cls / f"{j}.png", pixels)
            expected[(cls, j)] = pixels
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    ds = datasets.load_dataset("image_folder", "train", data_dir=tmp_path)
    assert ds.info.class_names == ("ant", "zebra")
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(ds.images[0], expected[("ant", 0)])
    np.testing.assert_array_equal(ds.images[3], expected[("zebra", 1)])


def test_image_folder_grayscale_auto(tmp_path):
    _save_image(tmp_path / "test" / "a" / "x.png", np.full((4, 4, 1), 7, np.uint8))
    ds = datasets.load_dataset("image_folder", "test", data_dir=tmp_path)
    chex.assert_shape(ds.images, (1, 4, 4, 1))
    rgb = datasets.load_dataset("image_folder", "test", data_dir=tmp_path, color_mode="rgb")
    chex.assert_shape(rgb.images, (1, 4, 4, 3))


def test_image_folder_size_mismatch_names_file(tmp_path):
    _save_image(tmp_path / "train" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    _save_image(tmp_path / "train" / "a" / "1.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(DataFormatError, match=r"1.png: shape \(5, 4, 3\), expected \(4, 4, 3\)"):
        datasets.load_dataset("image_folder", "train", data_dir=tmp_path)


def test_image_folder_missing_split(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"folder .*val not found"):
        datasets.load_dataset("image_folder", "val", data_dir=tmp_path)


def test_image_folder_empty_class(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="holds no .png/.jpg images"):
        datasets.load_dataset("image_folder", "train", data_dir=tmp_path)


# --------------------------------------------------------------------------- class-balanced subsets


def test_class_balanced_subset_counts_and_order():
    ds = _toy_dataset([5, 7, 9])
    sub = datasets.class_balanced_subset(ds, per_class=3, seed=1)
    np.testing.assert_array_equal(sub.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    original_index = sub.images[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(ds.labels[original_index], sub.labels)  # each image kept its own label
    assert len(set(original_index)) == 9
    assert sub.info == ds.info


def test_class_balanced_subset_fraction():
    ds = _toy_dataset([4, 6, 10])
    sub = datasets.class_balanced_subset(ds, fraction=0.5)
    np.testing.assert_array_equal(sub.class_counts(), [2, 3, 5])


def test_class_balanced_subset_is_deterministic_and_seeded():
    ds = _toy_dataset([20, 20, 20])
    pick = lambda seed: datasets.class_balanced_subset(ds, per_class=4, seed=seed).images[:, 0, 0, 0]  # noqa: E731
    np.testing.assert_array_equal(pick(3), pick(3))
    assert not np.array_equal(pick(3), pick(4))


def test_class_balanced_subset_too_few_images():
    ds = _toy_dataset([5, 2, 9])
    with pytest.raises(ValueError, match=r"class 1 \('c1'\) of 'toy' 'train' has 2 images, cannot take 3"):
        datasets.class_balanced_subset(ds, per_class=3)


def test_class_balanced_subset_needs_exactly_one_size():
    ds = _toy_dataset([5, 5])
    with pytest.raises(ValueError, match="exactly one of per_class and fraction"):
        datasets.class_balanced_subset(ds)
    with pytest.raises(ValueError, match="exactly one of per_class and fraction"):
        datasets.class_balanced_subset(ds, per_class=1, fraction=0.5)


def test_class_balanced_subset_bad_fraction():
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        datasets.class_balanced_subset(_toy_dataset([5, 5]), fraction=1.5)


# --------------------------------------------------------------------------- bounded, named file errors (issue 11.6)


def test_error_classes_are_input_file_errors():
    from distill_jax.errors import InputFileError

    assert issubclass(DataFormatError, InputFileError) and issubclass(DataNotFoundError, InputFileError)
    assert issubclass(DataNotFoundError, FileNotFoundError)  # still, for callers catching OSError


def test_truncated_npz_names_the_file(tmp_path):
    np.savez(tmp_path / "full.npz", image=np.zeros((64, 8, 8, 3), np.uint8), label=np.zeros(64, np.int64))
    cut = tmp_path / "train.npz"
    cut.write_bytes((tmp_path / "full.npz").read_bytes()[:5000])  # used to end in zipfile.BadZipFile
    with pytest.raises(DataFormatError, match=f"npz file {cut}: truncated or corrupt npz file"):
        datasets.load_dataset("npz", "train", data_dir=tmp_path)
    flipped = bytearray((tmp_path / "full.npz").read_bytes())
    flipped[3000] ^= 0xFF  # inside the pixels: a bad CRC
    cut.write_bytes(bytes(flipped))
    with pytest.raises(DataFormatError, match=f"npz file {cut}: truncated or corrupt npz file .*Bad CRC-32"):
        datasets.load_dataset("npz", "train", data_dir=tmp_path)


def test_deflate_bomb_npz_is_refused(tmp_path):
    # 6.3 MB of zero pixels deflate to ~6 kB; numpy inflated whatever the member declared.
    np.savez_compressed(
        tmp_path / "train.npz", image=np.zeros((2048, 32, 32, 3), np.uint8), label=np.zeros(2048, np.int64)
    )
    with pytest.raises(
        DataFormatError, match=r"train.npz: archive member 'image.npy' inflates \d+ compressed bytes .*zip bomb"
    ):
        datasets.load_dataset("npz", "train", data_dir=tmp_path)


def test_npz_array_over_the_cap_is_refused(tmp_path, monkeypatch):
    np.savez(tmp_path / "train.npz", image=np.zeros((100, 32, 32, 3), np.uint8), label=np.zeros(100, np.int64))
    monkeypatch.setenv("DISTILL_JAX_MAX_ARRAY_BYTES", str(200_000))
    with pytest.raises(
        DataFormatError,
        match=r"train.npz: archive member 'image.npy' declares 307328 bytes uncompressed, over the cap of 200000",
    ):
        datasets.load_dataset("npz", "train", data_dir=tmp_path)


def test_npz_member_without_npy_suffix_is_not_an_array(tmp_path):
    # np.load hands such a member out as raw bytes, which failed later with AttributeError.
    import zipfile

    with zipfile.ZipFile(tmp_path / "train.npz", "w") as archive:
        archive.writestr("image", b"\x93NUMPY not really")
        buffer = __import__("io").BytesIO()
        np.save(buffer, np.zeros(2, np.int64))
        archive.writestr("label.npy", buffer.getvalue())
    with pytest.raises(DataFormatError, match=r"train.npz: no array 'image'; it holds \['label'\]"):
        datasets.load_dataset("npz", "train", data_dir=tmp_path)


def test_npz_dataset_errors_name_the_file(tmp_path):
    np.savez(tmp_path / "train.npz", image=np.zeros((2, 2, 2, 1), np.uint8), label=np.array([0, 12]))
    with pytest.raises(
        DataFormatError,
        match=r"npz file .*train.npz: dataset 'cifar10_jpeg' split 'train': labels must lie in \[0, 10\)",
    ):
        datasets.load_dataset("cifar10_jpeg", "train", data_dir=tmp_path, file_pattern="{split}.npz")


def test_memory_error_becomes_data_format_error(tmp_path, monkeypatch):
    np.savez(tmp_path / "train.npz", image=np.zeros((2, 2, 2, 1), np.uint8), label=np.zeros(2, np.int64))

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(datasets, "read_npz", out_of_memory)  # the file reader, as datasets calls it
    with pytest.raises(DataFormatError, match=r"train.npz: ran out of memory \(MemoryError\)"):
        datasets.load_dataset("npz", "train", data_dir=tmp_path)


def test_idx_gzip_declaring_more_than_the_cap_is_refused_before_inflating(tmp_path, monkeypatch):
    path = _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((100, 100, 100), np.uint8), compress=True)
    monkeypatch.setenv("DISTILL_JAX_MAX_ARRAY_BYTES", str(500_000))
    with pytest.raises(
        DataFormatError,
        match=r"train-images-idx3-ubyte.gz: dimensions \(100, 100, 100\) declare 1000000 bytes, over the cap of 500000",
    ):
        datasets.read_idx(path)


def test_idx_corrupt_gzip_names_the_file(tmp_path):
    path = _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(200, dtype=np.uint8), compress=True)
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0xFF  # inside the deflate stream
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match=r"IDX file .*train-labels-idx1-ubyte.gz: cannot read it"):
        datasets.read_idx(path)


def test_undecodable_image_names_the_file(tmp_path):
    good = tmp_path / "train" / "a" / "x.png"
    _save_image(good, np.zeros((4, 4, 3), np.uint8))
    raw = bytearray(good.read_bytes())
    raw[40:60] = b"\xff" * 20  # a broken IHDR/IDAT chunk
    good.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match=r"image file .*x.png: cannot decode it"):
        datasets.load_dataset("image_folder", "train", data_dir=tmp_path, color_mode="rgb")


# --------------------------------------------------------------------------- bounds on what a file may make us allocate


def test_npz_label_past_the_class_limit_is_refused(tmp_path):
    # Without class names the class count is the largest label + 1: one label must not size the class
    # names (at most distill_jax.errors.MAX_CLASSES = 65536 classes).
    labels = np.arange(8) % 2
    labels[5] = 70_000
    np.savez(tmp_path / "train.npz", image=np.zeros((8, 2, 2, 1), np.uint8), label=labels)
    with pytest.raises(DataFormatError, match=r"train\.npz: dataset 'npz' split 'train': field 'labels': class index "
                                              r"70000, expected class indices in \[0, 65536\)"):
        datasets.load_dataset("npz", "train", data_dir=tmp_path)
    with pytest.raises(DataFormatError, match=r"field 'num_classes': 100000000 classes, expected .*\[1, 65536\]"):
        datasets.load_dataset("npz", "train", data_dir=tmp_path, num_classes=10 ** 8)


# The CIFAR python version, as the official files hold it: Python 2's cPickle (protocol 2) of a
# dict of str, with the array pickled by numpy as _reconstruct(ndarray, (0,), 'b') + BUILD.
def _py2_str(text: bytes) -> bytes:
    return b"U" + bytes([len(text)]) + text if len(text) < 256 else b"T" + struct.pack("<I", len(text)) + text


def _py2_array(rows: np.ndarray) -> bytes:
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + _py2_str(b"|") + \
        b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    shape = b"M" + struct.pack("<H", rows.shape[0]) + b"M" + struct.pack("<H", rows.shape[1]) + b"\x86"
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
            + b"(K\x01" + shape + dtype + b"\x89" + _py2_str(rows.tobytes()) + b"tb")


def _py2_dict(items) -> bytes:
    body = b""
    for key, value in items:
        if isinstance(value, np.ndarray):
            encoded = _py2_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            encoded = b"](" + b"".join(_py2_str(v) for v in value) + b"e"
        elif isinstance(value, list):
            encoded = b"](" + b"".join(b"K" + bytes([v]) for v in value) + b"e"
        else:
            encoded = _py2_str(value)
        body += _py2_str(key) + encoded
    return b"\x80\x02}(" + body + b"u."


def _tar_gz(path, members: dict, level=9):
    import io
    import tarfile

    with tarfile.open(path, "w:gz", compresslevel=level) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


CIFAR10_PY_MEMBERS = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]


def test_cifar_python_batches_as_python2_pickled_them_load(tmp_path):
    rng = np.random.default_rng(3)
    members, rows, labels = {}, {}, {}
    for i, member in enumerate(CIFAR10_PY_MEMBERS):
        rows[member], labels[member] = rng.integers(0, 256, (2, 3072), dtype=np.uint8), [i % 10, (i + 3) % 10]
        members[f"cifar-10-batches-py/{member}"] = _py2_dict([(b"batch_label", b"batch"), (b"labels", labels[member]),
                                                              (b"data", rows[member])])
    names = [b"c%d" % k for k in range(10)]
    members["cifar-10-batches-py/batches.meta"] = _py2_dict([(b"label_names", names), (b"num_vis", b"3072")])
    _tar_gz(tmp_path / "cifar-10-python.tar.gz", members)
    train = datasets.load_dataset("cifar10", "train", data_dir=tmp_path)
    expected = np.concatenate([rows[m] for m in CIFAR10_PY_MEMBERS[:5]]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(train.images, expected)
    np.testing.assert_array_equal(train.labels, sum((labels[m] for m in CIFAR10_PY_MEMBERS[:5]), []))
    assert train.info.class_names == tuple(n.decode() for n in names)


def _python_archive(folder, batch) -> pathlib.Path:
    import pickle

    members = {f"cifar-10-batches-py/{m}": pickle.dumps(batch, protocol=2) for m in CIFAR10_PY_MEMBERS}
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [b"c%d" % k for k in range(10)]},
                                                                protocol=2)
    return _tar_gz(folder / "cifar-10-python.tar.gz", members)


def test_cifar_python_pickle_calling_ndarray_directly_is_refused(tmp_path):
    # ndarray(shape, dtype, buffer, offset, strides): a stride-0 view of one byte standing for
    # (1000, 3072) pixels; a (50000, 3072) one per batch took gigabytes from a 750 kB archive.
    class StrideZero:
        def __reduce__(self):
            return np.ndarray, ((1000, 3072), np.dtype("u1"), b"\0", 0, (0, 0))

    path = _python_archive(tmp_path, {b"data": StrideZero(), b"labels": [0] * 1000})
    with pytest.raises(datasets.cifar.CifarArchiveError,
                       match=rf"{path}: member 'cifar-10-batches-py/data_batch_1': numpy.ndarray called directly"):
        datasets.load_dataset("cifar10", "train", data_dir=tmp_path)


def test_cifar_python_array_must_hold_its_own_bytes(tmp_path):
    # numpy's own reduce, but the state's shape declares more than its raw bytes hold.
    class Lying:
        def __reduce__(self):
            rebuild, args, state = np.zeros((2, 3072), np.uint8).__reduce__()
            return rebuild, args, (state[0], (1000, 3072)) + state[2:]

    path = _python_archive(tmp_path, {b"data": Lying(), b"labels": [0] * 1000})
    with pytest.raises(
        datasets.cifar.CifarArchiveError,
        match=rf"{path}: .*shape \(1000, 3072\) uint8 \(3072000 bytes\) "
        r"holds 6144 bytes",
    ):
        datasets.load_dataset("cifar10", "train", data_dir=tmp_path)


def test_cifar_python_pickle_memo_index_past_its_length_is_refused(tmp_path):
    # LONG_BINPUT 2**28: CPython's unpickler would size its memo (gigabytes) before anything else.
    members = {f"cifar-10-batches-py/{m}": b"\x80\x02}r\x00\x00\x00\x10." for m in CIFAR10_PY_MEMBERS}
    path = _tar_gz(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(datasets.cifar.CifarArchiveError, match=rf"{path}: a pickle opcode LONG_BINPUT .*268435456"):
        datasets.load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_binary_gzip_bomb_is_refused_while_inflating(tmp_path):
    # Six members of zero records: ~32 MB of tar from a ~33 kB archive (over 200:1).
    zeros = bytes(3073 * 1700)
    members = {
        f"cifar-10-batches-bin/{m}": zeros for m in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]
    }
    members["cifar-10-batches-bin/batches.meta.txt"] = b"\n".join(b"c%d" % k for k in range(10))
    path = _tar_gz(tmp_path / "cifar-10-binary.tar.gz", members)
    assert path.stat().st_size * 200 < 6 * len(zeros)
    with pytest.raises(datasets.cifar.CifarArchiveError, match=rf"{path}: the gzip stream inflates past \d+ bytes .* "
                                                               r"more than 200:1; refusing a possible gzip bomb"):
        datasets.load_dataset("cifar10", "train", data_dir=tmp_path)


def test_cifar_binary_member_over_the_cap_is_refused_before_reading(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    record = rng.integers(0, 10, (40, 3073), dtype=np.uint8).tobytes()  # 123 kB, incompressible
    members = {
        f"cifar-10-batches-bin/{m}": record for m in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]
    }
    members["cifar-10-batches-bin/batches.meta.txt"] = b"\n".join(b"c%d" % k for k in range(10))
    path = _tar_gz(tmp_path / "cifar-10-binary.tar.gz", members, level=1)
    assert len(datasets.load_dataset("cifar10", "train", data_dir=tmp_path)) == 200
    monkeypatch.setenv("DISTILL_JAX_MAX_ARRAY_BYTES", str(100_000))
    with pytest.raises(datasets.cifar.CifarArchiveError,
                       match=rf"{path}: archive member 'cifar-10-batches-bin/data_batch_1.bin' declares 122920 bytes "
                             r"uncompressed, over the cap of 100000 bytes"):
        datasets.load_dataset("cifar10", "train", data_dir=tmp_path)


def test_tar_with_too_many_entries_is_refused(tmp_path):
    from distill_jax.formats import torch_pickle

    members = {f"cifar-10-batches-bin/x{k}": b"" for k in range(torch_pickle.MAX_TAR_MEMBERS + 1)}
    path = _tar_gz(tmp_path / "cifar-10-binary.tar.gz", members)
    with pytest.raises(datasets.cifar.CifarArchiveError, match=rf"{path}: the archive lists more than 1024 entries"):
        datasets.load_dataset("cifar10", "train", data_dir=tmp_path)


def test_unknown_dataset_is_a_user_error_naming_where_it_came_from():
    from distill_jax.errors import UserError, user_error_message

    with pytest.raises(datasets.DatasetNameError) as err:
        datasets.check_dataset_name("cifar11", "config field 'data.dataset'")
    assert isinstance(err.value, UserError)
    assert user_error_message(err.value).startswith("config field 'data.dataset': unknown dataset 'cifar11'; "
                                                    "expected one of cifar10, cifar100, cifar10_jpeg")


def test_known_signatures_name_the_datasets_a_set_fits():
    assert datasets.known_signature("cifar100") == ((32, 32, 3), 100)
    assert datasets.known_signature("npz") is None
    assert datasets.datasets_with((28, 28, 1), 10) == ("fashion_mnist", "mnist")
    assert datasets.datasets_with((32, 32, 3), 10) == ("cifar10", "cifar10_jpeg")
    assert datasets.datasets_with((7, 7, 3), 10) == ()
