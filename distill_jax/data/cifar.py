"""CIFAR-10 and CIFAR-100 from the official archives people download once.

https://www.cs.toronto.edu/~kriz/cifar.html publishes each set in a binary and a python
version; both are read straight from the tar.gz (nothing is extracted to disk):

| archive | members | record |
|---|---|---|
| cifar-10-binary.tar.gz | cifar-10-batches-bin/data_batch_{1..5}.bin, test_batch.bin, batches.meta.txt | 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32) |
| cifar-100-binary.tar.gz | cifar-100-binary/train.bin, test.bin, fine_label_names.txt | coarse byte, fine byte, 3072 pixel bytes |
| cifar-10-python.tar.gz | cifar-10-batches-py/data_batch_{1..5}, test_batch, batches.meta | pickled dict: b'data' (N, 3072) uint8, b'labels' |
| cifar-100-python.tar.gz | cifar-100-python/train, test, meta | pickled dict: b'data', b'fine_labels', b'coarse_labels' |

The python version's pickles go through `NumpyPickleReader`, which accepts only what those
files hold (dicts, lists, bytes, numbers and plain numeric arrays): a pickle that names any
other global is refused before anything runs. Sizes are checked against the members'
declared sizes before reading, so a malformed archive raises `DataFormatError` naming it.
"""
from __future__ import annotations

import io
import pathlib
import pickle
import tarfile
from typing import Any, Optional

import numpy as np

from distill_jax.errors import InputFileError, max_array_bytes

DOWNLOAD_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
PIXELS = 32 * 32 * 3

# name -> (binary archive, its folder, {split: members}, label bytes before the pixels, the
#          label byte used) and the python archive likewise
ARCHIVES = {
    "cifar10": {
        "binary": ("cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                   {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}, 1, 0),
        "python": ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                   {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, b"labels"),
        "names": ("batches.meta.txt", "batches.meta", b"label_names"),
        "num_classes": 10,
    },
    "cifar100": {
        "binary": ("cifar-100-binary.tar.gz", "cifar-100-binary", {"train": ["train.bin"], "test": ["test.bin"]}, 2, 1),
        "python": ("cifar-100-python.tar.gz", "cifar-100-python", {"train": ["train"], "test": ["test"]},
                   b"fine_labels"),
        "names": ("fine_label_names.txt", "meta", b"fine_label_names"),
        "num_classes": 100,
    },
}


class CifarArchiveError(InputFileError):
    """A CIFAR archive is missing, truncated or not in the official layout."""


class _ArrayState:
    """Stand-in for numpy's `_reconstruct(ndarray, (0,), b'b')`: BUILD hands it the array's
    state (version, shape, dtype, fortran order, raw bytes), checked before any allocation."""

    def __init__(self, path: str):
        self.path, self.array = path, None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise CifarArchiveError(f"{self.path}: malformed numpy array state in a pickle")
        _, shape, dtype, fortran, raw = state
        if not (isinstance(dtype, np.dtype) and dtype.kind in "biuf" and isinstance(raw, bytes)
                and isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise CifarArchiveError(f"{self.path}: a pickled array that is not a plain numeric array")
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != len(raw) or len(raw) > max_array_bytes():
            raise CifarArchiveError(f"{self.path}: a pickled array of shape {shape} {dtype} holds {len(raw)} bytes")
        self.array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


class NumpyPickleReader(pickle.Unpickler):
    """Unpickles the CIFAR python batches: numeric numpy arrays inside plain containers only."""

    def __init__(self, payload: bytes, path: str):
        super().__init__(io.BytesIO(payload), encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return lambda cls, shape, typecode: _ArrayState(self.path)
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            def dtype(spec, align=False, copy=False):
                if not isinstance(spec, (str, bytes)):
                    raise CifarArchiveError(f"{self.path}: numpy.dtype of {spec!r} in a pickle")
                return np.dtype(spec.decode() if isinstance(spec, bytes) else spec)
            return dtype
        if module == "_codecs" and name == "encode":  # protocol 2 written by Python 3 stores bytes this way
            def encode(text, encoding="utf-8"):
                if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
                    raise CifarArchiveError(f"{self.path}: _codecs.encode is only allowed on text with 'latin1'")
                return text.encode("latin-1")
            return encode
        raise CifarArchiveError(f"{self.path}: refusing to load global '{module}.{name}' from a pickle "
                                "(only numeric numpy arrays are accepted)")


def _resolve(obj: Any) -> Any:
    if isinstance(obj, _ArrayState):
        return obj.array
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    return obj


def _member(archive: tarfile.TarFile, name: str, path: pathlib.Path, expected: Optional[int] = None) -> bytes:
    try:
        info = archive.getmember(name)
    except KeyError:
        raise CifarArchiveError(f"{path}: member '{name}' is missing (not the official layout)") from None
    if not info.isfile() or info.size > max_array_bytes() or (expected is not None and info.size != expected):
        want = f"{expected} bytes" if expected is not None else "a regular file"
        raise CifarArchiveError(f"{path}: member '{name}' has {info.size} bytes, expected {want}")
    data = archive.extractfile(info).read()
    if len(data) != info.size:
        raise CifarArchiveError(f"{path}: member '{name}' is truncated")
    return data


def _binary(archive, path, folder, members, label_bytes, label_index):
    images, labels = [], []
    record = label_bytes + PIXELS
    for member in members:
        raw = _member(archive, f"{folder}/{member}", path)
        if len(raw) % record or not raw:
            raise CifarArchiveError(f"{path}: member '{folder}/{member}' has {len(raw)} bytes, not a multiple "
                                    f"of the {record}-byte record")
        rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
        labels.append(rows[:, label_index].astype(np.int64))
        images.append(rows[:, label_bytes:])
    return np.concatenate(images), np.concatenate(labels)


def _python(archive, path, folder, members, label_key):
    images, labels = [], []
    for member in members:
        batch = _resolve(NumpyPickleReader(_member(archive, f"{folder}/{member}", path), str(path)).load())
        data, found = (batch.get(b"data"), batch.get(label_key)) if isinstance(batch, dict) else (None, None)
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == PIXELS and isinstance(found, list) and len(found) == len(data)):
            raise CifarArchiveError(f"{path}: member '{folder}/{member}' is not a CIFAR batch "
                                    f"(expected b'data' (N, 3072) uint8 and {label_key!r})")
        images.append(data)
        labels.append(np.asarray(found, np.int64))
    return np.concatenate(images), np.concatenate(labels)


def find_archive(name: str, data_dir: pathlib.Path) -> tuple[str, pathlib.Path]:
    """('binary' or 'python', path) of the first archive of `name` found in `data_dir`."""
    spec = ARCHIVES[name]
    for kind in ("binary", "python"):
        path = data_dir / spec[kind][0]
        if path.is_file():
            return kind, path
    raise FileNotFoundError(f"{spec['binary'][0]} or {spec['python'][0]}")


def read_archive(name: str, split: str, data_dir: pathlib.Path):
    """(images uint8 NHWC, labels int64, class names) of `split` ('train' or 'test')."""
    spec = ARCHIVES[name]
    kind, path = find_archive(name, data_dir)
    if split not in spec[kind][2]:
        raise CifarArchiveError(f"{path}: no split {split!r}; CIFAR has 'train' and 'test'")
    try:
        with tarfile.open(path, "r:gz") as archive:
            if kind == "binary":
                _, folder, members, label_bytes, label_index = spec["binary"]
                flat, labels = _binary(archive, path, folder, members[split], label_bytes, label_index)
                text = _member(archive, f"{folder}/{spec['names'][0]}", path).decode("utf-8", "replace")
                names = tuple(line.strip() for line in text.splitlines() if line.strip())
            else:
                _, folder, members, label_key = spec["python"]
                flat, labels = _python(archive, path, folder, members[split], label_key)
                meta = _resolve(NumpyPickleReader(_member(archive, f"{folder}/{spec['names'][1]}", path),
                                                  str(path)).load())
                names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                              for n in (meta.get(spec["names"][2]) or []) if isinstance(meta, dict))
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, UnicodeDecodeError) as err:
        if isinstance(err, CifarArchiveError):
            raise
        raise CifarArchiveError(f"{path}: not a readable CIFAR archive ({type(err).__name__}: {err})") from err
    if len(names) != spec["num_classes"] or labels.min() < 0 or labels.max() >= spec["num_classes"]:
        raise CifarArchiveError(f"{path}: expected {spec['num_classes']} classes, found {len(names)} names and "
                                f"labels in [{labels.min()}, {labels.max()}]")
    images = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # R, G, B planes -> NHWC
    return np.ascontiguousarray(images), labels, names
