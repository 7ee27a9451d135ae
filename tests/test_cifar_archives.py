"""CIFAR-10/100 from the official archives: small archives built here in the exact layout of
https://www.cs.toronto.edu/~kriz/cifar.html (binary and python versions)."""
import io
import pickle
import tarfile

import numpy as np
import pytest

from distill_jax.data import cifar, datasets
from distill_jax.data.datasets import DataNotFoundError


def _pixels(n, seed):
    """n images as CIFAR stores them: rows of 3072 bytes, the R, G and B planes of 32x32."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _tar(path, members: dict):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _py2_pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_binary(folder, per_batch=3):
    members, truth = {}, {"train": ([], []), "test": ([], [])}
    for i, member in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        pixels, labels = _pixels(per_batch, i), (np.arange(per_batch) + i) % 10
        members[f"cifar-10-batches-bin/{member}"] = np.concatenate(
            [labels[:, None].astype(np.uint8), pixels], 1
        ).tobytes()
        split = "test" if member.startswith("test") else "train"
        truth[split][0].append(pixels), truth[split][1].append(labels)
    members["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
    _tar(folder / "cifar-10-binary.tar.gz", members)
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in truth.items()}


def cifar100_python(folder, n=4):
    members, truth = {}, {}
    for i, split in enumerate(("train", "test")):
        pixels, fine = _pixels(n, 10 + i), (np.arange(n) * 7 + i) % 100
        members[f"cifar-100-python/{split}"] = _py2_pickle({b"filenames": [b"x.png"] * n, b"batch_label": b"b",
                                                            b"fine_labels": fine.tolist(),
                                                            b"coarse_labels": (fine // 5).tolist(), b"data": pixels})
        truth[split] = (pixels, fine)
    members["cifar-100-python/meta"] = _py2_pickle({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                                    b"coarse_label_names": [b"s"] * 20})
    _tar(folder / "cifar-100-python.tar.gz", members)
    return truth


def _as_nhwc(rows):
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def test_cifar10_binary_archive_from_the_data_root(tmp_path, monkeypatch):
    truth = cifar10_binary(tmp_path)
    monkeypatch.setenv("DISTILL_JAX_DATA", str(tmp_path))
    for split, count in (("train", 15), ("test", 3)):
        ds = datasets.load_dataset("cifar10", split)
        np.testing.assert_array_equal(ds.images, _as_nhwc(truth[split][0]))
        np.testing.assert_array_equal(ds.labels, truth[split][1])
        assert ds.images.shape == (count, 32, 32, 3) and ds.info.class_names == tuple(CIFAR10_NAMES)
    first = truth["train"][0][0]
    assert datasets.load_dataset("cifar10", "train").images[0, 0, 1, 2] == first[2 * 1024 + 1]  # B plane, row 0, col 1


def test_cifar100_python_archive_through_the_restricted_unpickler(tmp_path):
    truth = cifar100_python(tmp_path)
    ds = datasets.load_dataset("cifar100", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.images, _as_nhwc(truth["test"][0]))
    np.testing.assert_array_equal(ds.labels, truth["test"][1])  # the fine labels
    assert ds.info.num_classes == 100 and ds.info.class_names[3] == "c3"


def test_missing_archive_names_the_files_and_where_to_get_them(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        datasets.load_dataset("cifar100", "train", data_dir=tmp_path)
    message = str(err.value)
    assert "cifar-100-binary.tar.gz or cifar-100-python.tar.gz" in message and cifar.DOWNLOAD_PAGE in message
    assert "source='tfds'" in message


def test_a_pickle_naming_another_global_is_refused_before_it_runs(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran!",))

    members = {f"cifar-10-batches-py/{m}": _py2_pickle({b"data": Payload()})
               for m in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch", "batches.meta"]}
    _tar(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(cifar.CifarArchiveError, match=r"refusing to load global '(__builtin__|builtins).print'"):
        datasets.load_dataset("cifar10", "test", data_dir=tmp_path)


def test_a_truncated_batch_is_refused_naming_the_archive(tmp_path):
    cifar10_binary(tmp_path)
    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "r:gz") as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
    members["cifar-10-batches-bin/test_batch.bin"] = members["cifar-10-batches-bin/test_batch.bin"][:-5]
    _tar(path, members)
    with pytest.raises(
        cifar.CifarArchiveError, match=rf"{path}: member 'cifar-10-batches-bin/test_batch.bin' .*record"
    ):
        datasets.load_dataset("cifar10", "test", data_dir=tmp_path)
    path.write_bytes(path.read_bytes()[:200])  # a cut download
    with pytest.raises(cifar.CifarArchiveError, match="not a readable CIFAR archive"):
        datasets.load_dataset("cifar10", "test", data_dir=tmp_path)
