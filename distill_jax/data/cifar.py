"""CIFAR-10 and CIFAR-100 from the official archives people download once.

https://www.cs.toronto.edu/~kriz/cifar.html publishes each set in a binary and a python
version; both are read straight from the tar.gz (nothing is extracted to disk):

- cifar-10-binary.tar.gz: cifar-10-batches-bin/data_batch_{1..5}.bin, test_batch.bin,
  batches.meta.txt; a record is 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32).
- cifar-100-binary.tar.gz: cifar-100-binary/train.bin, test.bin, fine_label_names.txt; a record
  is a coarse byte, a fine byte, 3072 pixel bytes.
- cifar-10-python.tar.gz: cifar-10-batches-py/data_batch_{1..5}, test_batch, batches.meta;
  pickled dicts: b'data' (N, 3072) uint8, b'labels'.
- cifar-100-python.tar.gz: cifar-100-python/train, test, meta; pickled dicts: b'data',
  b'fine_labels', b'coarse_labels'.

The python version's pickles go through `NumpyPickleReader`, which accepts only what those
files hold (dicts, lists, bytes, numbers and plain numeric arrays pickled as numpy does it,
`_reconstruct(ndarray, (0,), b'b')` with the raw bytes): a pickle that names any other
global is refused before anything runs, and an array is built from its own bytes only (its
shape x itemsize must equal their length and fit the array cap), so no view of a few bytes
can stand for a large array. The archives are read through
`distill_jax.formats.torch_pickle.BoundedTarGz`: the zip rules (array cap per member, an
inflation budget for the archive) with the gzip stream as one compressed member, all checked
before reading. A malformed archive raises `CifarArchiveError` (an `InputFileError`) naming it.
"""
from __future__ import annotations

import io
import math
import pathlib
import pickle

import numpy as np

from distill_jax.errors import InputFileError, max_array_bytes
from distill_jax.formats.torch_pickle import MALFORMED_ERRORS, BoundedTarGz, describe_error, prescan_pickle

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


class _NdarrayType:
    """Stands in for ``numpy.ndarray``, which real batches name only as the first argument of
    ``_reconstruct``. It cannot be called (``ndarray(shape, dtype, buffer, offset, strides)``
    would build any view, e.g. stride 0 over one byte) nor changed by BUILD."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        raise CifarArchiveError("numpy.ndarray called directly in a pickle (real CIFAR batches never do)")

    def __setstate__(self, state):
        raise CifarArchiveError("BUILD applied to numpy.ndarray in a pickle")


_NDARRAY = _NdarrayType()


class _DtypeSpec:
    """Stands in for ``numpy.dtype(spec, align, copy)``; BUILD hands it the dtype's state, of which
    only the byte order is used. Resolves to a fresh plain numeric dtype (never one of numpy's
    shared dtype objects, which BUILD would otherwise alter for the whole process)."""

    __slots__ = ("spec", "byteorder")

    def __init__(self, spec):
        if isinstance(spec, bytes):
            spec = spec.decode("ascii")
        if not isinstance(spec, str) or len(spec) > 8:
            raise CifarArchiveError(f"numpy.dtype of {spec!r} in a pickle")
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state):
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else None
        order = order.decode("ascii") if isinstance(order, bytes) else order
        if order not in ("<", ">", "|", "="):
            raise CifarArchiveError(f"a pickled dtype's state {state!r} is not a plain dtype's")
        self.byteorder = order

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.spec)
        if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            raise CifarArchiveError(f"a pickled array of dtype {self.spec!r} (only plain numeric arrays)")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


class _ArrayState:
    """Stands in for numpy's ``_reconstruct(ndarray, (0,), b'b')``: BUILD hands it the array's
    state (version, shape, dtype, fortran order, raw bytes). The array is made from those bytes
    alone: its shape x itemsize must equal their length, checked (with the array cap) before
    anything is allocated."""

    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5) or self.array is not None:
            raise CifarArchiveError("malformed numpy array state in a pickle")
        _, shape, dtype, fortran, raw = state
        if not (isinstance(dtype, _DtypeSpec) and isinstance(raw, bytes) and isinstance(shape, tuple)
                and len(shape) <= 32 and all(type(d) is int and d >= 0 for d in shape)):
            raise CifarArchiveError("a pickled array that is not a plain numeric array")
        dtype = dtype.resolve()
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != len(raw) or nbytes > max_array_bytes():
            raise CifarArchiveError(f"a pickled array of shape {shape} {dtype} ({nbytes} bytes) holds {len(raw)} "
                                    f"bytes (the cap on one array is {max_array_bytes()} bytes)")
        self.array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise CifarArchiveError(f"numpy _reconstruct({cls!r}, {shape!r}, {typecode!r}) is not how a numpy "
                                "array is pickled")
    return _ArrayState()


def _numpy_dtype(spec, align=False, copy=False):
    return _DtypeSpec(spec)


def _codecs_encode(text, encoding="utf-8"):
    """Protocol 2 written by Python 3 stores bytes as _codecs.encode(text, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CifarArchiveError("_codecs.encode is only allowed on text with 'latin1'")
    return text.encode("latin-1")


class _Global:
    """A function handed to the pickle as a global: callable, but no BUILD or setattr can change it."""

    __slots__ = ("function",)

    def __init__(self, function):
        object.__setattr__(self, "function", function)

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __setattr__(self, key, value):
        raise CifarArchiveError("a pickle tried to change one of its globals")

    def __setstate__(self, state):
        raise CifarArchiveError("BUILD applied to a function in a pickle")


# What the official batches reference (numpy arrays pickled by numpy 1.x or 2.x, and the bytes of
# protocol 2 written by Python 3), each to a stand-in above: nothing else resolves.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _Global(_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _Global(_reconstruct),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global(_numpy_dtype),
    ("_codecs", "encode"): _Global(_codecs_encode),
}


class NumpyPickleReader(pickle.Unpickler):
    """Unpickles the CIFAR python batches: numeric numpy arrays inside plain containers only
    (`ALLOWED_GLOBALS`). The pickle's opcodes are checked first (`prescan_pickle`: no memo index
    or frame past its own length)."""

    def __init__(self, payload: bytes, path: str):
        prescan_pickle(payload, path, "a pickle", CifarArchiveError)
        super().__init__(io.BytesIO(payload), encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise CifarArchiveError(f"{self.path}: refusing to load global '{module}.{name}' from a pickle "
                                    "(only numeric numpy arrays are accepted)")
        return found


def _unpickle(archive: BoundedTarGz, member: str, path: pathlib.Path) -> dict:
    """A batch or meta pickle: a dict whose pickled arrays are numpy arrays."""
    try:
        loaded = NumpyPickleReader(archive.read(member), str(path)).load()
    except CifarArchiveError as err:
        message = str(err)
        raise CifarArchiveError(
            message if message.startswith(str(path)) else f"{path}: member '{member}': {message}"
        ) from None
    if not isinstance(loaded, dict):
        raise CifarArchiveError(f"{path}: member '{member}' holds a {type(loaded).__name__}, expected a dict")
    return {key: value.array if isinstance(value, _ArrayState) else value for key, value in loaded.items()}


def _binary(archive: BoundedTarGz, path, folder, members, label_bytes, label_index):
    images, labels = [], []
    record = label_bytes + PIXELS
    for member in members:
        raw = archive.read(f"{folder}/{member}")
        if len(raw) % record or not raw:
            raise CifarArchiveError(f"{path}: member '{folder}/{member}' has {len(raw)} bytes, not a multiple "
                                    f"of the {record}-byte record")
        rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
        labels.append(rows[:, label_index].astype(np.int64))
        images.append(rows[:, label_bytes:])
    return np.concatenate(images), np.concatenate(labels)


def _python(archive: BoundedTarGz, path, folder, members, label_key):
    images, labels = [], []
    for member in members:
        batch = _unpickle(archive, f"{folder}/{member}", path)
        data, found = batch.get(b"data"), batch.get(label_key)
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and len(data)
                and data.shape[1] == PIXELS and isinstance(found, list) and len(found) == len(data)
                and all(type(label) is int for label in found)):
            raise CifarArchiveError(f"{path}: member '{folder}/{member}' is not a CIFAR batch "
                                    f"(expected b'data' (N, 3072) uint8 and {label_key!r}, a list of N class indices)")
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
        with BoundedTarGz(path, CifarArchiveError, what="CIFAR archive") as archive:
            if kind == "binary":
                _, folder, members, label_bytes, label_index = spec["binary"]
                flat, labels = _binary(archive, path, folder, members[split], label_bytes, label_index)
                text = archive.read(f"{folder}/{spec['names'][0]}").decode("utf-8", "replace")
                names = tuple(line.strip() for line in text.splitlines() if line.strip())
            else:
                _, folder, members, label_key = spec["python"]
                flat, labels = _python(archive, path, folder, members[split], label_key)
                found = _unpickle(archive, f"{folder}/{spec['names'][1]}", path).get(spec["names"][2])
                if not isinstance(found, list) or not all(isinstance(n, (bytes, str)) for n in found):
                    raise CifarArchiveError(f"{path}: member '{folder}/{spec['names'][1]}': expected "
                                            f"{spec['names'][2]!r}, a list of class names")
                names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in found)
    except InputFileError:
        raise
    except MALFORMED_ERRORS as err:
        raise CifarArchiveError(f"{path}: not a readable CIFAR archive ({describe_error(err)})") from None
    if len(names) != spec["num_classes"] or labels.min() < 0 or labels.max() >= spec["num_classes"]:
        raise CifarArchiveError(f"{path}: expected {spec['num_classes']} classes, found {len(names)} names and "
                                f"labels in [{labels.min()}, {labels.max()}]")
    images = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # R, G, B planes -> NHWC
    return np.ascontiguousarray(images), labels, names
