"""Read ``torch.save`` files without PyTorch and without a general unpickler.

A ``torch.save`` file (PyTorch >= 1.6) is a zip archive::

    <prefix>/data.pkl        pickle (protocol 2) of the saved object
    <prefix>/data/<key>      raw bytes of each storage (little-endian)
    <prefix>/byteorder       optional, 'little' or 'big'
    <prefix>/version

Tensors are pickled as calls to ``torch._utils._rebuild_tensor_v2`` whose first
argument is a *persistent id* ``('storage', <StorageClass>, key, location, numel)``.
``pickle.load`` would import and call whatever global the pickle names, which lets a
crafted file run arbitrary code. ``SafeTorchUnpickler`` resolves only the handful of
globals that tensor rebuilding needs, each to a function of this module, and refuses
everything else with :class:`UnsafePickleError`. Besides tensors it rebuilds
``OrderedDict`` (state dicts) and plain numeric numpy scalars (DC/DSA/DM result files
store accuracies as ``numpy.float64``; protocol 2 spells their bytes as
``_codecs.encode(text, 'latin1')``). Storages are read from the archive
into numpy whatever device they were saved from (``cpu``, ``cuda:0``, ...).

The result is the saved object with plain Python containers and numpy arrays in
place of tensors.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, Callable

import numpy as np

__all__ = [
    "TorchFileError",
    "UnsafePickleError",
    "SafeTorchUnpickler",
    "load_torch_file",
    "ALLOWED_GLOBALS",
]


class TorchFileError(ValueError):
    """A torch file is missing, truncated, corrupt or not in the zip format."""


class UnsafePickleError(TorchFileError):
    """The pickle inside a torch file names a global outside the allow-list."""

    def __init__(self, path: str, module: str, name: str):
        self.path = str(path)
        self.module = module
        self.name = name
        super().__init__(
            f"{path}: refusing to load global '{module}.{name}' from data.pkl: only tensor "
            "rebuilding globals are allowed (the file may be malicious, or use a torch "
            "feature this reader does not support)"
        )


def _bfloat16_dtype() -> np.dtype:
    # ml_dtypes ships with jax; it is the only numpy bfloat16 there is.
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


# Storage class name -> numpy dtype (as a factory so bfloat16 is imported lazily).
_STORAGE_DTYPES: dict[str, Callable[[], np.dtype]] = {
    "DoubleStorage": lambda: np.dtype("<f8"),
    "FloatStorage": lambda: np.dtype("<f4"),
    "HalfStorage": lambda: np.dtype("<f2"),
    "BFloat16Storage": _bfloat16_dtype,
    "LongStorage": lambda: np.dtype("<i8"),
    "IntStorage": lambda: np.dtype("<i4"),
    "ShortStorage": lambda: np.dtype("<i2"),
    "CharStorage": lambda: np.dtype("i1"),
    "ByteStorage": lambda: np.dtype("u1"),
    "BoolStorage": lambda: np.dtype("?"),
    "ComplexFloatStorage": lambda: np.dtype("<c8"),
    "ComplexDoubleStorage": lambda: np.dtype("<c16"),
    "UntypedStorage": lambda: np.dtype("u1"),
}

# torch dtype objects (pickled as globals like 'torch.float32', used by
# _rebuild_tensor_v3) -> numpy dtype.
_TORCH_DTYPES: dict[str, Callable[[], np.dtype]] = {
    "float64": _STORAGE_DTYPES["DoubleStorage"],
    "float32": _STORAGE_DTYPES["FloatStorage"],
    "float16": _STORAGE_DTYPES["HalfStorage"],
    "bfloat16": _bfloat16_dtype,
    "int64": _STORAGE_DTYPES["LongStorage"],
    "int32": _STORAGE_DTYPES["IntStorage"],
    "int16": _STORAGE_DTYPES["ShortStorage"],
    "int8": _STORAGE_DTYPES["CharStorage"],
    "uint8": _STORAGE_DTYPES["ByteStorage"],
    "bool": _STORAGE_DTYPES["BoolStorage"],
    "complex64": _STORAGE_DTYPES["ComplexFloatStorage"],
    "complex128": _STORAGE_DTYPES["ComplexDoubleStorage"],
}


class _Frozen:
    """Base for the objects ``find_class`` hands out: no ``__dict__``, no setattr.

    A pickle can apply BUILD (setstate/setattr) to any object it holds, including the
    globals it loaded; these objects refuse, so a file cannot alter this module.
    """

    __slots__ = ()

    def __setattr__(self, key, value):
        raise TypeError(f"{type(self).__name__} objects are read-only")

    def __reduce__(self):  # never pickled back out
        raise TypeError(f"{type(self).__name__} objects cannot be pickled")


class _StorageType(_Frozen):
    """Stands in for ``torch.FloatStorage`` & co: carries the element dtype."""

    __slots__ = ("storage_name", "dtype")

    def __init__(self, storage_name: str, dtype: np.dtype):
        object.__setattr__(self, "storage_name", storage_name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self):
        return f"<storage type torch.{self.storage_name}>"


class _TorchDtype(_Frozen):
    """Stands in for a ``torch.<dtype>`` object."""

    __slots__ = ("torch_name", "dtype")

    def __init__(self, torch_name: str, dtype: np.dtype):
        object.__setattr__(self, "torch_name", torch_name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self):
        return f"<dtype torch.{self.torch_name}>"


class _Storage(_Frozen):
    """A storage read from the archive: a flat numpy array of its elements."""

    __slots__ = ("key", "location", "data")

    def __init__(self, key: str, location: str, data: np.ndarray):
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "location", location)
        object.__setattr__(self, "data", data)


class _SafeCallable(_Frozen):
    """An allowed global that is a function, bound to the unpickler's file name."""

    __slots__ = ("qualified_name", "function")

    def __init__(self, qualified_name: str, function: Callable[..., Any]):
        object.__setattr__(self, "qualified_name", qualified_name)
        object.__setattr__(self, "function", function)

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __repr__(self):
        return f"<safe {self.qualified_name}>"


def _tensor_from_storage(
    path: str,
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    dtype: np.dtype | None = None,
) -> np.ndarray:
    """Build an owned, C-contiguous numpy array for a (possibly strided) tensor view."""
    if not isinstance(storage, _Storage):
        raise TorchFileError(f"{path}: tensor rebuild expected a storage, got {type(storage).__name__}")
    if not (isinstance(storage_offset, int) and storage_offset >= 0):
        raise TorchFileError(f"{path}: storage {storage.key}: bad storage_offset {storage_offset!r}")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in size + stride):
        raise TorchFileError(f"{path}: storage {storage.key}: bad size {size!r} / stride {stride!r}")
    flat = storage.data
    if dtype is not None and dtype != flat.dtype:
        # _rebuild_tensor_v3 with an untyped (byte) storage: reinterpret the bytes.
        usable = flat.nbytes - flat.nbytes % dtype.itemsize
        flat = flat[:usable].view(dtype)
    if any(v == 0 for v in size):
        return np.zeros(size, dtype=flat.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise TorchFileError(
            f"{path}: storage {storage.key} holds {flat.size} elements but the tensor "
            f"(offset {storage_offset}, size {size}, stride {stride}) reaches element {last}"
        )
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[storage_offset:],
        shape=size,
        strides=tuple(s * item for s in stride),
        writeable=False,
    )
    return np.array(view, order="C", copy=True)


class SafeTorchUnpickler(pickle.Unpickler):
    """Unpickler for ``data.pkl`` of a torch zip that only rebuilds tensors.

    ``find_class`` maps each allowed ``(module, name)`` to a local stand-in; any other
    global raises :class:`UnsafePickleError` before anything is imported or called.
    """

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._path = str(path)
        self._storages: dict[str, _Storage] = {}
        self._big_endian = self._read_byteorder() == "big"
        self._globals = self._make_globals()

    # -- allowed globals -------------------------------------------------------------
    def _make_globals(self) -> dict[tuple[str, str], Any]:
        path = self._path

        def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                              backward_hooks=None, metadata=None):
            return _tensor_from_storage(path, storage, storage_offset, size, stride)

        def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                              dtype, metadata=None):
            if not isinstance(dtype, _TorchDtype):
                raise TorchFileError(f"{path}: _rebuild_tensor_v3 expected a torch dtype, got {dtype!r}")
            return _tensor_from_storage(path, storage, storage_offset, size, stride, dtype.dtype)

        def rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
            # A Parameter is a tensor plus autograd flags; keep only the values.
            if not isinstance(data, np.ndarray):
                raise TorchFileError(f"{path}: _rebuild_parameter expected a tensor, got {type(data).__name__}")
            return data

        def numpy_dtype(spec, align=False, copy=True):
            # Always a fresh copy (copy=True): the pickle applies BUILD/__setstate__ to
            # it next, which must never touch numpy's shared built-in dtypes.
            if not isinstance(spec, str):
                raise TorchFileError(f"{path}: numpy.dtype expected a type string, got {spec!r}")
            dtype = np.dtype(spec, align=False, copy=True)
            _require_plain_dtype(path, dtype)
            return dtype

        def numpy_scalar(dtype, data=None):
            # numpy scalars (e.g. accuracies in DC/DSA/DM result files) pickle as
            # scalar(dtype, raw_bytes); rebuild them from the bytes only.
            if not isinstance(dtype, np.dtype):
                raise TorchFileError(f"{path}: numpy scalar expected a dtype, got {type(dtype).__name__}")
            _require_plain_dtype(path, dtype)
            if not isinstance(data, bytes) or len(data) != dtype.itemsize:
                raise TorchFileError(f"{path}: numpy scalar of {dtype} expected {dtype.itemsize} raw bytes")
            return np.frombuffer(data, dtype=dtype, count=1)[0]

        def codecs_encode(text, encoding="utf-8", errors="strict"):
            # Protocol 2 stores bytes as _codecs.encode(str, 'latin1').
            if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
                raise TorchFileError(f"{path}: _codecs.encode is only allowed on text with 'latin1'")
            return text.encode("latin-1")

        def ordered_dict(*args):
            # torch pickles backward hooks and state dicts as OrderedDict(); the
            # constructor only copies items, so it cannot run code.
            return collections.OrderedDict(*args)

        table: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): _SafeCallable("torch._utils._rebuild_tensor_v2", rebuild_tensor_v2),
            ("torch._utils", "_rebuild_tensor_v3"): _SafeCallable("torch._utils._rebuild_tensor_v3", rebuild_tensor_v3),
            ("torch._utils", "_rebuild_parameter"): _SafeCallable("torch._utils._rebuild_parameter", rebuild_parameter),
            ("torch._utils", "_rebuild_parameter_with_state"): _SafeCallable(
                "torch._utils._rebuild_parameter_with_state", rebuild_parameter
            ),
            ("collections", "OrderedDict"): _SafeCallable("collections.OrderedDict", ordered_dict),
            ("numpy", "dtype"): _SafeCallable("numpy.dtype", numpy_dtype),
            ("numpy.core.multiarray", "scalar"): _SafeCallable("numpy.core.multiarray.scalar", numpy_scalar),
            ("numpy._core.multiarray", "scalar"): _SafeCallable("numpy._core.multiarray.scalar", numpy_scalar),
            ("_codecs", "encode"): _SafeCallable("_codecs.encode", codecs_encode),
        }
        for name in _STORAGE_DTYPES:
            table[("torch", name)] = ("storage", name)
        for name in _TORCH_DTYPES:
            table[("torch", name)] = ("dtype", name)
        return table

    def find_class(self, module: str, name: str):
        entry = self._globals.get((module, name))
        if entry is None:
            raise UnsafePickleError(self._path, module, name)
        if isinstance(entry, tuple):
            kind, key = entry
            if kind == "storage":
                return _StorageType(key, _STORAGE_DTYPES[key]())
            return _TorchDtype(key, _TORCH_DTYPES[key]())
        return entry

    # -- storages --------------------------------------------------------------------
    def _read_byteorder(self) -> str:
        name = f"{self._prefix}/byteorder"
        if name not in self._archive.namelist():
            return "little"
        order = self._archive.read(name).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise TorchFileError(f"{self._path}: field 'byteorder': expected 'little' or 'big', got {order!r}")
        return order

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchFileError(f"{self._path}: unsupported persistent id {pid!r} (expected a storage)")
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"{self._path}: storage {key!r}: expected a storage type, got {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise TorchFileError(f"{self._path}: malformed storage id {pid!r}")
        if key in self._storages:
            return self._storages[key]
        member = f"{self._prefix}/data/{key}"
        dtype = storage_type.dtype
        nbytes = numel * dtype.itemsize
        try:
            info = self._archive.getinfo(member)
        except KeyError:
            raise TorchFileError(f"{self._path}: storage '{member}' is missing from the archive") from None
        if info.file_size < nbytes:
            raise TorchFileError(
                f"{self._path}: storage '{member}' has {info.file_size} bytes, expected "
                f"{nbytes} ({numel} x {dtype.name}); the file is truncated or corrupt"
            )
        raw = _read_member(self._archive, member, self._path)[:nbytes]
        data = np.frombuffer(raw, dtype=dtype.newbyteorder(">") if self._big_endian else dtype, count=numel)
        data = data.astype(dtype, copy=False) if self._big_endian else data
        storage = _Storage(key, str(location), data)
        self._storages[key] = storage
        return storage


def _require_plain_dtype(path: str, dtype: np.dtype) -> None:
    """Only numeric dtypes: object or structured ones could carry nested pickles."""
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufc":
        raise TorchFileError(f"{path}: refusing numpy dtype {dtype!r} (only plain numeric dtypes are allowed)")


def _read_member(archive: zipfile.ZipFile, member: str, path: str) -> bytes:
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise TorchFileError(f"{path}: cannot read '{member}' from the archive ({err}); the file is truncated or corrupt") from None


def _find_prefix(archive: zipfile.ZipFile, path: str) -> str:
    """The archive's top folder: the one holding data.pkl (its name varies by file)."""
    candidates = [n[: -len("/data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(candidates) != 1:
        raise TorchFileError(
            f"{path}: expected exactly one '<folder>/data.pkl' in the zip archive, found {len(candidates)}; "
            "not a torch.save file"
        )
    return candidates[0]


def load_torch_file(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` zip file into Python containers holding numpy arrays.

    Raises :class:`UnsafePickleError` if the pickle names any global outside the
    tensor-rebuilding allow-list, and :class:`TorchFileError` for a missing, truncated
    or corrupt file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TorchFileError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(2)
        hint = (
            " (it looks like a bare pickle: the legacy pre-1.6 torch format is not supported)"
            if head[:1] == b"\x80"
            else ""
        )
        raise TorchFileError(f"{path}: not a zip archive; the file is truncated, corrupt or not a torch.save file{hint}")
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _find_prefix(archive, path)
            payload = _read_member(archive, f"{prefix}/data.pkl", path)
            unpickler = SafeTorchUnpickler(io.BytesIO(payload), archive, prefix, path)
            try:
                return unpickler.load()
            except TorchFileError:
                raise
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
                    IndexError, KeyError) as err:
                raise TorchFileError(f"{path}: data.pkl is corrupt or unsupported ({type(err).__name__}: {err})") from None
    except zipfile.BadZipFile as err:
        raise TorchFileError(f"{path}: corrupt zip archive ({err})") from None


# (module, name) pairs the unpickler accepts, for documentation and tests.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("collections", "OrderedDict"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    ]
    + [("torch", name) for name in _STORAGE_DTYPES]
    + [("torch", name) for name in _TORCH_DTYPES]
)
