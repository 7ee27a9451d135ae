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

Bounds: nothing a file declares is allocated before it is checked. Every archive
member read is checked by :func:`check_zip_member` (its declared uncompressed size against the
array cap, ``distill_jax.errors.max_array_bytes()``, and its compression ratio), and all members
of one archive together may decompress to at most ``max(cap, 200 x the archive's size)``. A
storage must hold exactly ``numel x itemsize`` bytes and at most the cap. A tensor must lie
inside its storage (strides >= 0, ``offset + max index < numel``), take at most the cap, and
the tensors of one file together at most twice the bytes of its storages plus 1 MiB, so a
view (stride 0, overlapping strides, the same storage many times) cannot blow a small file up.

The same bounded reading serves the npz readers (:func:`read_npz`, used by
``distilled.py`` and ``datasets.py``): each ``.npy`` member's header (shape x itemsize) must
match the member's size and fit the cap before anything is read. :class:`BoundedTarGz` applies
the zip rules to a ``.tar.gz`` (the CIFAR archives): the gzip stream counts as one compressed
member (its inflation ratio checked on every read and seek), each member against the cap and the
archive's :class:`ZipBudget`, and at most MAX_TAR_MEMBERS entries. :func:`prescan_pickle` is the
memo check any restricted unpickler here runs first. Every malformed file raises
:class:`TorchFileError` (or the caller's error class), a :class:`distill_jax.errors.InputFileError`
naming the file, never another exception.
"""
from __future__ import annotations

import collections
import contextlib
import gzip
import io
import itertools
import lzma
import math
import os
import pickle
import pickletools
import struct
import tarfile
import tokenize
import zipfile
import zlib
from typing import Any, Callable

import numpy as np

from distill_jax.errors import InputFileError, max_array_bytes

__all__ = [
    "TorchFileError",
    "UnsafePickleError",
    "SafeTorchUnpickler",
    "load_torch_file",
    "ALLOWED_GLOBALS",
    "MALFORMED_ERRORS",
    "MAX_COMPRESSION_RATIO",
    "ZipBudget",
    "check_zip_member",
    "check_member_size",
    "BoundedTarGz",
    "prescan_pickle",
    "describe_error",
    "read_npz",
    "npz_keys",
    "npz_header",
]


class TorchFileError(InputFileError):
    """A torch file is missing, truncated, corrupt, not in the zip format, or larger than allowed."""


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


VIEW_ALLOWANCE_BYTES = 1 << 20
"""Tensors of one file may take at most twice the bytes of its storages plus this much."""


class _TensorBudget:
    """What the tensors of one file may materialise (see the module docstring)."""

    def __init__(self, path: str, cap: int):
        self.path = path
        self.cap = cap
        self.storage_bytes = 0
        self.tensor_bytes = 0

    def admit(self, storage: "_Storage", nbytes: int, storage_offset: int, size: tuple, stride: tuple) -> None:
        where = f"{self.path}: storage {storage.key}: tensor (offset {storage_offset}, size {size}, stride {stride})"
        if nbytes > self.cap:
            raise TorchFileError(
                f"{where} would take {nbytes} bytes, over the cap of {self.cap} bytes on one array "
                "(DISTILL_JAX_MAX_ARRAY_BYTES)"
            )
        allowed = 2 * self.storage_bytes + VIEW_ALLOWANCE_BYTES
        if self.tensor_bytes + nbytes > allowed:
            raise TorchFileError(
                f"{where} would take {nbytes} bytes over a storage of {storage.data.nbytes} bytes: the file's "
                f"tensors would take {self.tensor_bytes + nbytes} bytes from {self.storage_bytes} bytes of "
                "storages, more than twice that plus 1 MiB (stride-0 or overlapping views of a small "
                "storage); refused, the file is corrupt or crafted"
            )
        self.tensor_bytes += nbytes


def _tensor_from_storage(
    path: str,
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    dtype: np.dtype | None = None,
    budget: _TensorBudget | None = None,
) -> np.ndarray:
    """Build an owned, C-contiguous numpy array for a (possibly strided) tensor view.

    The view must lie inside its storage and fit ``budget`` (the cap, and the file's view
    allowance); both are checked on the declared numbers, before anything is allocated.
    """
    if not isinstance(storage, _Storage):
        raise TorchFileError(f"{path}: tensor rebuild expected a storage, got {type(storage).__name__}")
    if not (isinstance(storage_offset, int) and storage_offset >= 0):
        raise TorchFileError(f"{path}: storage {storage.key}: bad storage_offset {storage_offset!r}")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise TorchFileError(f"{path}: storage {storage.key}: bad size {size!r} / stride {stride!r}")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in size + stride):
        raise TorchFileError(f"{path}: storage {storage.key}: bad size {size!r} / stride {stride!r}")
    if len(size) > 32:
        raise TorchFileError(
            f"{path}: storage {storage.key}: a tensor of {len(size)} dimensions (at most 32 supported)"
        )
    flat = storage.data
    if dtype is not None and dtype != flat.dtype:
        # _rebuild_tensor_v3 with an untyped (byte) storage: reinterpret the bytes.
        usable = flat.nbytes - flat.nbytes % dtype.itemsize
        flat = flat[:usable].view(dtype)
    count = math.prod(size)
    nbytes = count * flat.dtype.itemsize
    if count and storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) >= flat.size:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        raise TorchFileError(
            f"{path}: storage {storage.key} holds {flat.size} elements but the tensor "
            f"(offset {storage_offset}, size {size}, stride {stride}) reaches element {last}"
        )
    if budget is not None:
        budget.admit(storage, nbytes, storage_offset, size, stride)
    if count == 0:
        return np.zeros(size, dtype=flat.dtype)
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

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str, zip_budget: "ZipBudget | None" = None):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._path = str(path)
        self._cap = max_array_bytes()
        self._zip_budget = zip_budget if zip_budget is not None else ZipBudget(path, self._cap)
        self._tensor_budget = _TensorBudget(self._path, self._cap)
        self._storages: dict[str, _Storage] = {}
        self._big_endian = self._read_byteorder() == "big"
        self._globals = self._make_globals()

    # -- allowed globals -------------------------------------------------------------
    def _make_globals(self) -> dict[tuple[str, str], Any]:
        path = self._path
        budget = self._tensor_budget

        def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                              backward_hooks=None, metadata=None):
            return _tensor_from_storage(path, storage, storage_offset, size, stride, budget=budget)

        def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                              dtype, metadata=None):
            if not isinstance(dtype, _TorchDtype):
                raise TorchFileError(f"{path}: _rebuild_tensor_v3 expected a torch dtype, got {dtype!r}")
            return _tensor_from_storage(path, storage, storage_offset, size, stride, dtype.dtype, budget=budget)

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
        order = _read_member(self._archive, name, self._path, self._zip_budget).decode("ascii", "replace").strip()
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
        if nbytes > self._cap:
            raise TorchFileError(
                f"{self._path}: storage '{member}' declares {numel} x {dtype.name} = {nbytes} bytes, over the cap "
                f"of {self._cap} bytes on one array (DISTILL_JAX_MAX_ARRAY_BYTES)"
            )
        try:
            info = self._archive.getinfo(member)
        except KeyError:
            raise TorchFileError(f"{self._path}: storage '{member}' is missing from the archive") from None
        if info.file_size != nbytes:
            raise TorchFileError(
                f"{self._path}: storage '{member}' has {info.file_size} bytes, expected "
                f"{nbytes} ({numel} x {dtype.name}); the file is truncated or corrupt"
            )
        raw = _read_member(self._archive, member, self._path, self._zip_budget)
        if len(raw) != nbytes:
            raise TorchFileError(
                f"{self._path}: storage '{member}' read {len(raw)} bytes, expected {nbytes}; the file is corrupt"
            )
        data = np.frombuffer(raw, dtype=dtype.newbyteorder(">") if self._big_endian else dtype, count=numel)
        data = data.astype(dtype, copy=False) if self._big_endian else data
        storage = _Storage(key, str(location), data)
        self._storages[key] = storage
        self._tensor_budget.storage_bytes += nbytes
        return storage


def _require_plain_dtype(path: str, dtype: np.dtype) -> None:
    """Only numeric dtypes: object or structured ones could carry nested pickles."""
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufc":
        raise TorchFileError(f"{path}: refusing numpy dtype {dtype!r} (only plain numeric dtypes are allowed)")


# ---------------------------------------------------------------------------------------
# Bounded archive reading (torch zips here; npz files for distilled.py and datasets.py)
# ---------------------------------------------------------------------------------------

MAX_COMPRESSION_RATIO = 200
"""A member above RATIO_CHECK_BYTES that inflates more than this (uncompressed / compressed) is
refused as a likely zip bomb; real data (pixels, weights) deflates far less."""
RATIO_CHECK_BYTES = 4 << 20
MAX_NPY_HEADER_BYTES = 1 << 16
"""The most header bytes an npy member may declare (numpy writes under 100 for plain arrays)."""

MALFORMED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # includes UnicodeDecodeError
    TypeError,
    LookupError,  # KeyError, IndexError
    AttributeError,
    ArithmeticError,  # OverflowError, ZeroDivisionError
    EOFError,
    OSError,
    RuntimeError,  # NotImplementedError (zip encryption / methods), RecursionError
    SyntaxError,  # npy header literals
    BufferError,
    MemoryError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
    pickle.UnpicklingError,
    tokenize.TokenError,
    zipfile.BadZipFile,
)
"""What parsing a malformed file can raise from the standard library, numpy, zipfile and
pickle. Readers turn these into their InputFileError; anything else is a bug and propagates."""


def describe_error(err: BaseException) -> str:
    """'<Type>: <message>' for an error message; MemoryError says what it means."""
    if isinstance(err, MemoryError):
        return "ran out of memory (MemoryError): the file declares more than this machine can hold"
    return f"{type(err).__name__}: {err}"


class ZipBudget:
    """Uncompressed bytes one archive (a zip, or a tar.gz: :class:`BoundedTarGz`) may still yield:
    ``max(cap, 200 x the archive's size)`` in all (so many small members cannot add up to a bomb
    either)."""

    def __init__(self, path: str | os.PathLike, cap: int | None = None):
        cap = max_array_bytes() if cap is None else cap
        try:
            self.archive_size: int | None = os.path.getsize(path)
        except OSError:  # not a file on disk (a label only): the cap alone bounds it
            self.archive_size = None
        self.left = max(cap, MAX_COMPRESSION_RATIO * (self.archive_size or 0))

    def take(self, info: zipfile.ZipInfo, where: str, error: type[InputFileError]) -> None:
        self.take_size(info.filename, info.file_size, where, error)

    def take_size(self, name: str, size: int, where: str, error: type[InputFileError]) -> None:
        """Count ``size`` uncompressed bytes of member ``name`` against the budget, before reading them."""
        if size > self.left:
            raise error(
                f"{where}: archive member '{name}' would take the archive past "
                f"{MAX_COMPRESSION_RATIO}x its size (or the array cap) in uncompressed bytes; "
                "refusing a possible zip bomb"
            )
        self.left -= size


def check_zip_member(
    info: zipfile.ZipInfo,
    where: str,
    error: type[InputFileError] = TorchFileError,
    *,
    cap: int | None = None,
    allowance: int = 0,
    archive_size: int | None = None,
) -> None:
    """Refuse a member whose declared uncompressed size is over ``cap + allowance``, whose
    compression ratio marks a bomb, or (given ``archive_size``) whose compressed bytes would
    lie past the end of the archive (zipfile would ask the OS for that many bytes at once);
    checked on the zip directory, before any byte is read."""
    packed = info.compress_size
    if archive_size is not None and info.header_offset + packed > archive_size:
        raise error(
            f"{where}: archive member '{info.filename}' declares {packed} compressed bytes at offset "
            f"{info.header_offset}, past the end of the {archive_size}-byte file; the file is truncated or corrupt"
        )
    check_member_size(info.filename, info.file_size, packed, where, error, cap=cap, allowance=allowance)


def check_member_size(
    name: str,
    size: int,
    packed: int | None,
    where: str,
    error: type[InputFileError],
    *,
    cap: int | None = None,
    allowance: int = 0,
) -> None:
    """The rule for any archive member (zip, tar.gz), on its declared sizes before it is read:
    at most ``cap + allowance`` bytes uncompressed, and (given the ``packed`` bytes it inflates
    from) over RATIO_CHECK_BYTES at most MAX_COMPRESSION_RATIO times those."""
    cap = max_array_bytes() if cap is None else cap
    if size > cap + allowance:
        raise error(
            f"{where}: archive member '{name}' declares {size} bytes uncompressed, over the cap "
            f"of {cap} bytes on one array (DISTILL_JAX_MAX_ARRAY_BYTES)"
        )
    if packed is not None and size > RATIO_CHECK_BYTES and size > MAX_COMPRESSION_RATIO * max(packed, 1):
        raise error(
            f"{where}: archive member '{name}' inflates {packed} compressed bytes to {size} "
            f"({size // max(packed, 1)}:1, more than {MAX_COMPRESSION_RATIO}:1); refusing a possible zip bomb"
        )


def _read_member(archive: zipfile.ZipFile, member: str, path: str, budget: ZipBudget | None = None) -> bytes:
    try:
        info = archive.getinfo(member)
        budget = budget if budget is not None else ZipBudget(path)
        check_zip_member(info, path, TorchFileError, archive_size=budget.archive_size)
        budget.take(info, path, TorchFileError)
        return archive.read(info)
    except InputFileError:
        raise
    except MALFORMED_ERRORS as err:
        raise TorchFileError(
            f"{path}: cannot read '{member}' from the archive ({describe_error(err)}); the file is truncated or corrupt"
        ) from None


def prescan_pickle(payload: bytes, where: str, what: str = "data.pkl",
                   error: type[InputFileError] = TorchFileError) -> None:
    """Walk a pickle's opcodes (``pickletools.genops``, pure Python) before the C unpickler
    sees them. CPython's unpickler sizes (and zero-fills) its memo to twice the largest memo
    index it is given, so an 8-byte pickle storing to index 2**28 takes 4 GiB; a memo index or
    frame length here must not exceed the pickle's own length. genops also refuses any
    counted argument (bytes, strings) longer than what follows it."""
    limit = len(payload)
    for opcode, arg, position in pickletools.genops(payload):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT", "FRAME") and not (
            isinstance(arg, int) and 0 <= arg <= limit
        ):
            raise error(
                f"{where}: {what} opcode {opcode.name} at byte {position} has argument {arg!r}, more than the "
                f"pickle's {limit} bytes allow; refused, the file is corrupt or crafted"
            )


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
    tensor-rebuilding allow-list, and :class:`TorchFileError` for a missing, truncated,
    corrupt or oversized file (see the module docstring for the bounds).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TorchFileError(f"{path}: no such file")
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as handle:
                head = handle.read(2)
            hint = (
                " (it looks like a bare pickle: the legacy pre-1.6 torch format is not supported)"
                if head[:1] == b"\x80"
                else ""
            )
            raise TorchFileError(
                f"{path}: not a zip archive; the file is truncated, corrupt or not a torch.save file{hint}"
            )
        with zipfile.ZipFile(path) as archive:
            prefix = _find_prefix(archive, path)
            budget = ZipBudget(path)
            payload = _read_member(archive, f"{prefix}/data.pkl", path, budget)
            try:
                prescan_pickle(payload, path)
                unpickler = SafeTorchUnpickler(io.BytesIO(payload), archive, prefix, path, budget)
                return unpickler.load()
            except InputFileError:
                raise
            except MALFORMED_ERRORS as err:
                raise TorchFileError(f"{path}: data.pkl is corrupt or unsupported ({describe_error(err)})") from None
    except InputFileError:
        raise
    except MALFORMED_ERRORS as err:
        raise TorchFileError(f"{path}: corrupt zip archive ({describe_error(err)})") from None


# ---------------------------------------------------------------------------------------
# npz files: numpy's np.load allocates what an npy header declares before reading it and
# lets zipfile/tokenize/zlib errors through; this reader checks first and names the file.
# ---------------------------------------------------------------------------------------


def _read_exact(member, count: int, what: str) -> bytes:
    data = member.read(count)
    if len(data) != count:
        raise EOFError(f"{what}: expected {count} bytes, got {len(data)}")
    return data


def _npy_header(member, info: zipfile.ZipInfo, where: str, error: type[InputFileError]):
    """(shape, fortran_order, dtype, header bytes) of an open npy member, checked."""
    preamble = _read_exact(member, 8, "npy magic")
    if preamble[:6] != b"\x93NUMPY":
        raise error(f"{where}: archive member '{info.filename}' is not an npy array (bad magic)")
    major = preamble[6]
    if major not in (1, 2, 3) or preamble[7] != 0:
        raise error(f"{where}: archive member '{info.filename}': unsupported npy format version {major}.{preamble[7]}")
    length_bytes = _read_exact(member, 2 if major == 1 else 4, "npy header length")
    header_length = int.from_bytes(length_bytes, "little")
    if header_length > MAX_NPY_HEADER_BYTES:
        raise error(
            f"{where}: archive member '{info.filename}' declares a {header_length}-byte npy header "
            f"(at most {MAX_NPY_HEADER_BYTES})"
        )
    raw = preamble + length_bytes + _read_exact(member, header_length, "npy header")
    stream = io.BytesIO(raw)
    np.lib.format.read_magic(stream)
    reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = reader(stream, max_header_size=MAX_NPY_HEADER_BYTES)
    if dtype.hasobject:
        raise error(
            f"{where}: array '{info.filename}' holds Python objects (dtype {dtype}); loading them needs pickle, refused"
        )
    if dtype.subdtype is not None or dtype.itemsize == 0:
        raise error(f"{where}: array '{info.filename}': unsupported dtype {dtype}")
    return tuple(int(v) for v in shape), bool(fortran_order), dtype, len(raw)


def _read_npy(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, error, cap: int, budget: ZipBudget
) -> np.ndarray:
    check_zip_member(info, where, error, cap=cap, allowance=MAX_NPY_HEADER_BYTES + 12, archive_size=budget.archive_size)
    budget.take(info, where, error)
    with archive.open(info) as member:
        shape, fortran_order, dtype, header_bytes = _npy_header(member, info, where, error)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes > cap:
            raise error(
                f"{where}: array '{info.filename}' declares shape {shape} of {dtype} = {nbytes} bytes, over the "
                f"cap of {cap} bytes on one array (DISTILL_JAX_MAX_ARRAY_BYTES)"
            )
        if info.file_size - header_bytes != nbytes:
            raise error(
                f"{where}: array '{info.filename}' declares shape {shape} of {dtype} = {nbytes} bytes but the "
                f"member holds {info.file_size - header_bytes}; the file is truncated or corrupt"
            )
        buffer = bytearray(nbytes)
        view = memoryview(buffer)
        done = 0
        while done < nbytes:
            chunk = member.read(min(1 << 20, nbytes - done))
            if not chunk:
                raise EOFError(f"array '{info.filename}' ends after {done} of {nbytes} bytes")
            view[done:done + len(chunk)] = chunk
            done += len(chunk)
        if member.read(1):  # also makes zipfile check the CRC at the end of the member
            raise error(f"{where}: array '{info.filename}' has bytes after its data; the file is corrupt")
    array = np.frombuffer(buffer, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)


def _open_npz(path: str, where: str, error):
    if not os.path.isfile(path):
        raise error(f"{where}: no such file")
    if not zipfile.is_zipfile(path):
        raise error(f"{where}: truncated or corrupt npz file (not a zip archive)")
    return zipfile.ZipFile(path)


@contextlib.contextmanager
def _npz_errors(where: str, error):
    """Turn what a malformed npz raises into ``error`` naming the file."""
    try:
        yield
    except InputFileError:
        raise
    except MALFORMED_ERRORS as err:
        raise error(f"{where}: truncated or corrupt npz file ({describe_error(err)})") from None


def read_npz(
    path: str | os.PathLike,
    error: type[InputFileError],
    keys: set[str] | None = None,
    where: str | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of an npz (all, or those named in ``keys``), each checked before it is read.

    Members not ending in ``.npy`` are ignored. Object arrays (which need pickle) are refused,
    as ``np.load(allow_pickle=False)`` does. Errors are ``error`` with messages starting
    ``where`` (default: the path).
    """
    path = os.fspath(path)
    where = path if where is None else where
    cap = max_array_bytes()
    with _npz_errors(where, error):
        with _open_npz(path, where, error) as archive:
            budget = ZipBudget(path, cap)
            arrays = {}
            for info in archive.infolist():
                key = info.filename[: -len(".npy")]
                if not info.filename.endswith(".npy") or (keys is not None and key not in keys):
                    continue
                arrays[key] = _read_npy(archive, info, where, error, cap, budget)
            return arrays


def npz_keys(path: str | os.PathLike, error: type[InputFileError], where: str | None = None) -> set[str]:
    """The array names in an npz, from its directory alone."""
    path = os.fspath(path)
    where = path if where is None else where
    with _npz_errors(where, error):
        with _open_npz(path, where, error) as archive:
            return {name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")}


def npz_header(path: str | os.PathLike, key: str, error: type[InputFileError], where: str | None = None):
    """(shape, dtype) of one npz array from its header alone."""
    path = os.fspath(path)
    where = path if where is None else where
    with _npz_errors(where, error):
        with _open_npz(path, where, error) as archive:
            info = archive.getinfo(key + ".npy")
            check_zip_member(
                info, where, error, allowance=MAX_NPY_HEADER_BYTES + 12, archive_size=os.path.getsize(path)
            )
            with archive.open(info) as member:
                shape, _, dtype, _ = _npy_header(member, info, where, error)
            return shape, dtype


# ---------------------------------------------------------------------------------------
# tar.gz archives (the CIFAR archives): the zip rules, with the gzip stream as one member.
# ---------------------------------------------------------------------------------------

MAX_TAR_MEMBERS = 1024
"""The most entries a tar.gz may list (its directory is read whole; the CIFAR archives hold under 10)."""


class _InflationLimit:
    """The decompressed stream of a ``.gz``, for tarfile: any read or seek that would pass ``limit``
    bytes, or one read of more than ``cap`` bytes, raises ``error`` before it happens."""

    def __init__(self, stream, limit: int, cap: int, archive_size: int, where: str, error: type[InputFileError]):
        self._stream, self._limit, self._cap = stream, limit, cap
        self._archive_size, self._where, self._error = archive_size, where, error

    def _refuse(self, position: int):
        raise self._error(
            f"{self._where}: the gzip stream inflates past {self._limit} bytes (at byte {position}) from a "
            f"{self._archive_size}-byte archive, more than {MAX_COMPRESSION_RATIO}:1; refusing a possible gzip bomb"
        )

    def tell(self) -> int:
        return self._stream.tell()

    def read(self, size: int | None = -1) -> bytes:
        position = self._stream.tell()
        allowed = self._limit - position
        if size is None or size < 0:
            size = allowed + 1
        elif size > self._cap + 2 * 512:  # a member (<= cap) and its header block
            raise self._error(
                f"{self._where}: an entry at byte {position} of the tar stream asks for {size} bytes at once, "
                f"over the cap of {self._cap} bytes on one array (DISTILL_JAX_MAX_ARRAY_BYTES)"
            )
        data = self._stream.read(min(size, allowed + 1))
        if len(data) > allowed:
            self._refuse(position + len(data))
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._stream.tell() + offset if whence == io.SEEK_CUR else None
        if target is None:
            raise OSError("seeking from the end of a gzip stream is not supported")
        if target > self._limit:
            self._refuse(target)
        return self._stream.seek(target)


class BoundedTarGz:
    """A ``.tar.gz`` read member by member under the zip rules.

    The gzip stream is one compressed member of ``archive size`` bytes: once past RATIO_CHECK_BYTES
    it may inflate at most MAX_COMPRESSION_RATIO times that, checked on every read and seek (so
    skipping over a bomb stops as early as reading it). The directory may list at most
    MAX_TAR_MEMBERS entries. Each member read must be a regular file, pass
    :func:`check_member_size` (the array cap) and fit the archive's :class:`ZipBudget`, all
    checked on its declared size before a byte of it is read. Every failure is ``error``
    naming ``where`` (default: the path); an unreadable archive is "not a readable ``what``".
    """

    def __init__(self, path: str | os.PathLike, error: type[InputFileError], where: str | None = None,
                 cap: int | None = None, what: str = "tar.gz archive"):
        self.path = os.fspath(path)
        self.where = self.path if where is None else where
        self.error = error
        self.cap = max_array_bytes() if cap is None else cap
        self._raw = None
        try:
            size = os.path.getsize(self.path)
            self._raw = open(self.path, "rb")
            stream = gzip.GzipFile(fileobj=self._raw, mode="rb")
            limit = max(RATIO_CHECK_BYTES, MAX_COMPRESSION_RATIO * size)
            self._tar = tarfile.open(
                fileobj=_InflationLimit(stream, limit, self.cap, size, self.where, error), mode="r:"
            )
            self._members: dict[str, tarfile.TarInfo] = {}
            for count in itertools.count(1):
                info = self._tar.next()
                if info is None:
                    break
                if count > MAX_TAR_MEMBERS:
                    raise error(f"{self.where}: the archive lists more than {MAX_TAR_MEMBERS} entries; "
                                "refused, the file is corrupt or crafted")
                self._members[info.name] = info
            self._budget = ZipBudget(self.path, self.cap)
        except BaseException as err:
            self.close()
            if isinstance(err, (InputFileError, FileNotFoundError)):
                raise
            if isinstance(err, MALFORMED_ERRORS + (tarfile.TarError,)):
                raise error(f"{self.where}: not a readable {what} ({describe_error(err)})") from None
            raise

    def names(self) -> list[str]:
        return list(self._members)

    def read(self, name: str, expected: int | None = None) -> bytes:
        """The bytes of member ``name`` (of exactly ``expected`` bytes, if given)."""
        info = self._members.get(name)
        if info is None:
            raise self.error(f"{self.where}: member '{name}' is missing (not the expected layout)")
        if not info.isfile() or (expected is not None and info.size != expected):
            want = f"{expected} bytes" if expected is not None else "a regular file"
            raise self.error(f"{self.where}: member '{name}' has {info.size} bytes, expected {want}")
        check_member_size(name, info.size, None, self.where, self.error, cap=self.cap)
        self._budget.take_size(name, info.size, self.where, self.error)
        try:
            data = self._tar.extractfile(info).read()
        except InputFileError:
            raise
        except MALFORMED_ERRORS + (tarfile.TarError,) as err:
            raise self.error(f"{self.where}: cannot read member '{name}' ({describe_error(err)}); "
                             "the archive is truncated or corrupt") from None
        if len(data) != info.size:
            raise self.error(f"{self.where}: member '{name}' is truncated ({len(data)} of {info.size} bytes)")
        return data

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def __enter__(self) -> "BoundedTarGz":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
