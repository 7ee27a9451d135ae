"""Distilled datasets: one in-memory type, readers for published formats, our own format.

Every published distilled set (docs/method.md §5) is read into a :class:`DistilledSet`: images
float32 NHWC, labels either int64 class indices ``(N,)`` or float32 learned label
vectors ``(N, C)``, plus the name of the pixel space the images live in
(``preprocessing``, docs/method.md §4). ``preprocessing`` is a *label*, not an operation: the
distilled pixels are kept as published, and whoever evaluates on them must put the
real test images through the same transform.

Formats (``FORMATS``) and how :func:`load_distilled` recognises them:

* ``pt_pair``: MTT / reference code, a folder with ``images_best.pt`` + ``labels_best.pt``
  (NCHW), or the path of an ``images_*.pt`` file beside its ``labels_*.pt``.
* ``dc_res``: DC / DSA / DM ``res_*.pt``; ``['data'][experiment] = [images, labels]``.
* ``flax_msgpack``: FRePo / RCIG Flax checkpoints (``*.msgpack`` or ``checkpoint_<step>``)
  holding ``params/x_proto``, ``params/y_proto`` (RCIG: under ``ema_average``).
* ``frepo_npz``: npz with ``image``, ``label`` (NHWC).
* ``kip_npz`` / ``rfad_npz``: npz with ``images``, ``labels``; KIP is NHWC, RFAD NCHW,
  told apart by which axis has 1 or 3 channels (pass ``format=`` when ambiguous).
* ``distill_jax``: this project's own npz (``images``, ``labels``, JSON ``metadata``).

The *source* (the distillation method) picks the default preprocessing
(``DEFAULT_PREPROCESSING``). For ``pt_pair`` folders the source is a heuristic: a
folder (or file) name containing ``frepo`` means FRePo images (the reference-code
layout is also used to republish FRePo sets), anything else means MTT; pass
``source=`` to override. Sets in the reference-code ``.pt`` layout are in the reference
code's own ZCA space (``zca_mtt``) whatever their source: measured on the shared FRePo sets
(docs/results.md, "A finding on preprocessing"). FRePo's own formats default to ``zca_frepo``.

Every reader bounds what it allocates and raises :class:`DistilledFormatError`
(an :class:`~distill_jax.errors.InputFileError`) naming the file for anything malformed:
``.pt`` files through :mod:`distill_jax.formats.torch_pickle`; npz files through its
:func:`~distill_jax.formats.torch_pickle.read_npz` (each member's size, compression ratio and npy
header checked against the array cap before reading); msgpack checkpoints through
:func:`read_msgpack_file`, which refuses a file over the cap before reading it (it is decoded
whole), limits container lengths so nested headers cannot preallocate more than the cap, and
refuses any array declared over the cap or not matching its bytes. A class count (index
labels' largest value + 1, a label vector's length, a stored ``num_classes``) may be at most
``distill_jax.errors.MAX_CLASSES``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import re
from typing import Any, Callable, Mapping

import numpy as np

from distill_jax import atomic
from distill_jax.errors import MAX_CLASSES, InputFileError, check_class_count, max_array_bytes
from distill_jax.formats.torch_pickle import (
    MALFORMED_ERRORS,
    TorchFileError,
    describe_error,
    load_torch_file,
    npz_header,
    npz_keys,
    read_npz,
)

__all__ = [
    "DistilledSet",
    "DistilledFormatError",
    "PREPROCESSING",
    "SOURCES",
    "FORMATS",
    "DEFAULT_PREPROCESSING",
    "FORMAT_VERSION",
    "file_sha256",
    "load_distilled",
    "detect_format",
    "save_distilled",
    "summarize_distilled",
    "read_pt_pair",
    "read_dc_res",
    "read_flax_msgpack",
    "read_frepo_npz",
    "read_kip_npz",
    "read_rfad_npz",
    "read_distill_jax",
    "restore_msgpack",
    "read_msgpack_file",
]

PREPROCESSING = ("none", "standardize", "zca_mtt", "zca_frepo", "zca_kip")
"""Pixel spaces (docs/method.md §4): 'zca_mtt' = raw [0,1] pixels, ZCA with absolute eps 0.1 on
the unbiased covariance; 'zca_frepo' = per-channel standardisation then ZCA with
trace-relative lambda 0.1; 'zca_kip' = 'zca_frepo' plus per-image L2 normalisation;
'standardize' = per-channel mean/std only; 'none' = raw pixels."""

SOURCES = ("mtt", "frepo", "rcig", "kip", "rfad", "dc")
"""Distillation methods ('dc' stands for DC, DSA and DM, which share a format)."""

DEFAULT_PREPROCESSING: Mapping[str, str] = {
    "mtt": "zca_mtt",
    "frepo": "zca_frepo",  # FRePo's own formats; its sets republished as .pt pairs: REFERENCE_CODE_SPACE
    "rcig": "zca_frepo",
    "kip": "zca_frepo",
    "rfad": "zca_frepo",
    "dc": "standardize",
}

FORMATS = ("pt_pair", "dc_res", "flax_msgpack", "frepo_npz", "kip_npz", "rfad_npz", "distill_jax")

FORMAT_VERSION = 1
"""Version of the ``distill_jax`` npz layout written by :func:`save_distilled`."""

_CHANNEL_COUNTS = (1, 3)


class DistilledFormatError(InputFileError):
    """A distilled-set file is unreadable, larger than allowed, or its content is not a valid set."""


def _input_errors(reader: Callable[..., "DistilledSet"]) -> Callable[..., "DistilledSet"]:
    """Make a reader's MemoryError (a legitimate file too large for this machine, or one the
    bounds let through) and deep-recursion errors the project's input error naming the file."""

    @functools.wraps(reader)
    def wrapped(path, *args, **kwargs):
        try:
            return reader(path, *args, **kwargs)
        except InputFileError:
            raise
        except (MemoryError, RecursionError) as err:
            raise DistilledFormatError(f"{os.fspath(path)}: {describe_error(err)}") from None

    return wrapped


# ---------------------------------------------------------------------------------------
# The in-memory type
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class DistilledSet:
    """A distilled dataset, validated on construction; its arrays are read-only copies.

    Attributes:
      images: float32 (N, H, W, C), C in (1, 3).
      labels: int64 (N,) class indices, or float32 (N, num_classes) label vectors.
      num_classes: number of classes.
      preprocessing: the pixel space of ``images``, one of ``PREPROCESSING``.
      provenance: JSON-serialisable dict: ``format``, ``source``, ``path``, ``sha256``
        ({file name: hex digest}), ``notes``; optional ``files`` ({field: file}) used
        to name the file in error messages.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    preprocessing: str
    provenance: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        provenance = dict(self.provenance)
        images, labels = _validated_arrays(self.images, self.labels, self.num_classes, self.preprocessing, provenance)
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "provenance", provenance)

    @property
    def label_kind(self) -> str:
        """'index' for class indices, 'vector' for (N, C) label vectors."""
        return "index" if self.labels.ndim == 1 else "vector"

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(int(v) for v in self.images.shape[1:])

    def class_counts(self) -> np.ndarray:
        """Images per class, int64 (num_classes,); label vectors count by their argmax."""
        classes = self.labels if self.label_kind == "index" else np.argmax(self.labels, axis=1)
        return np.bincount(classes, minlength=self.num_classes).astype(np.int64)


def _where(provenance: Mapping, field: str) -> str:
    files = provenance.get("files") or {}
    return str(files.get(field) or provenance.get("path") or "<in-memory DistilledSet>")


def _fail(provenance: Mapping, field: str, message: str):
    raise DistilledFormatError(f"{_where(provenance, field)}: field '{field}': {message}")


def _validated_arrays(images, labels, num_classes, preprocessing, provenance):
    """Check every invariant of a DistilledSet; return read-only float32/int64 copies."""
    if preprocessing not in PREPROCESSING:
        _fail(provenance, "preprocessing", f"expected one of {PREPROCESSING}, got {preprocessing!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        _fail(provenance, "num_classes", f"expected a positive integer, got {num_classes!r}")
    check_class_count(num_classes, _where(provenance, "num_classes"), "num_classes", DistilledFormatError)
    images = np.asarray(images)
    if images.ndim != 4:
        _fail(provenance, "images", f"expected rank 4 (N, H, W, C), got shape {images.shape}")
    if images.shape[-1] not in _CHANNEL_COUNTS:
        _fail(
            provenance,
            "images",
            f"expected NHWC with {_CHANNEL_COUNTS} channels in the last axis, got shape {images.shape}",
        )
    if min(images.shape) < 1:
        _fail(provenance, "images", f"expected a non-empty set, got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        _fail(provenance, "images", f"expected floating-point pixels, got dtype {images.dtype}")
    images = np.array(images, dtype=np.float32, order="C", copy=True)
    if not np.all(np.isfinite(images)):
        bad = int(np.size(images) - np.count_nonzero(np.isfinite(images)))
        _fail(provenance, "images", f"{bad} pixel(s) are NaN or infinite")

    labels = np.asarray(labels)
    num_images = images.shape[0]
    if labels.ndim not in (1, 2):
        _fail(provenance, "labels", f"expected (N,) class indices or (N, C) label vectors, got shape {labels.shape}")
    if labels.shape[0] != num_images:
        _fail(provenance, "labels", f"label count {labels.shape[0]} != image count {num_images}")
    if labels.ndim == 1:
        if not np.issubdtype(labels.dtype, np.integer):
            _fail(provenance, "labels", f"expected integer class indices, got dtype {labels.dtype}")
        labels = np.array(labels, dtype=np.int64, copy=True)
        if labels.min() < 0 or labels.max() >= num_classes:
            _fail(
                provenance,
                "labels",
                f"class indices must lie in [0, {int(num_classes)}), got range [{labels.min()}, {labels.max()}]",
            )
    else:
        if not np.issubdtype(labels.dtype, np.floating):
            _fail(provenance, "labels", f"expected float label vectors, got dtype {labels.dtype}")
        if labels.shape[1] != num_classes:
            _fail(
                provenance,
                "labels",
                f"label vectors have {labels.shape[1]} entries, expected num_classes={int(num_classes)}",
            )
        labels = np.array(labels, dtype=np.float32, copy=True)
        if not np.all(np.isfinite(labels)):
            _fail(provenance, "labels", "label vectors hold NaN or infinite values")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def summarize_distilled(dset: DistilledSet) -> dict:
    """JSON-ready summary (what ``distill-jax inspect --json`` prints)."""
    provenance = dset.provenance
    images = dset.images.astype(np.float64)
    return {
        "format": provenance.get("format"),
        "source": provenance.get("source"),
        "path": provenance.get("path"),
        "num_images": dset.num_images,
        "image_shape": list(dset.image_shape),
        "label_kind": dset.label_kind,
        "num_classes": dset.num_classes,
        "class_counts": [int(v) for v in dset.class_counts()],
        "value_range": {
            "min": float(images.min()),
            "max": float(images.max()),
            "mean": float(images.mean()),
            "std": float(images.std()),
        },
        "preprocessing": dset.preprocessing,
        "sha256": dict(provenance.get("sha256") or {}),
        "notes": provenance.get("notes", ""),
    }


# ---------------------------------------------------------------------------------------
# Helpers shared by the readers
# ---------------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _provenance(fmt: str, source: str, path: str, files: Mapping[str, str], notes: str = "") -> dict:
    unique = sorted(set(files.values()))
    return {
        "format": fmt,
        "source": source,
        "path": os.path.abspath(path),
        "sha256": {os.path.basename(f): file_sha256(f) for f in unique},
        "notes": notes,
        "files": {field: os.path.abspath(f) for field, f in files.items()},
    }


REFERENCE_CODE_SPACE = "zca_mtt"
"""The pixel space of every set saved in the reference code's .pt layout: that code
re-saves sets (FRePo's included) after its own ZCA (raw [0,1] pixels, eps 0.1). Measured:
the shared FRePo .pt sets match zca_mtt's pixel statistics (std 0.267 vs 0.265; zca_frepo
0.467), and a ConvNet trained on cifar10_10_frepo scores far higher on a zca_mtt test split."""


def _resolve_preprocessing(preprocessing: str | None, source: str, path: str, layout_space: str | None = None) -> str:
    if preprocessing is None:
        return layout_space or DEFAULT_PREPROCESSING[source]
    if preprocessing not in PREPROCESSING:
        raise DistilledFormatError(
            f"{path}: field 'preprocessing': expected one of {PREPROCESSING}, got {preprocessing!r}"
        )
    return preprocessing


def _check_source(source: str | None, allowed: tuple[str, ...], path: str) -> None:
    if source is not None and source not in allowed:
        raise DistilledFormatError(f"{path}: option 'source': expected one of {allowed}, got {source!r}")


def _layout_of(shape: tuple[int, ...]) -> str | None:
    """'NHWC' or 'NCHW' when exactly one of axis 1 / axis 3 looks like channels."""
    if len(shape) != 4:
        return None
    last, second = shape[3] in _CHANNEL_COUNTS, shape[1] in _CHANNEL_COUNTS
    if last and not second:
        return "NHWC"
    if second and not last:
        return "NCHW"
    return None


def _to_nhwc(array: Any, layout: str, path: str, field: str) -> np.ndarray:
    """Check a rank-4 float image tensor in the given layout and return it as NHWC."""
    if not isinstance(array, np.ndarray):
        raise DistilledFormatError(f"{path}: field '{field}': expected an image tensor, got {type(array).__name__}")
    if array.ndim != 4:
        raise DistilledFormatError(
            f"{path}: field '{field}': expected a rank-4 {layout} image tensor, got shape {array.shape}"
        )
    channel_axis = 1 if layout == "NCHW" else 3
    if array.shape[channel_axis] not in _CHANNEL_COUNTS:
        other = "NHWC" if layout == "NCHW" else "NCHW"
        raise DistilledFormatError(
            f"{path}: field '{field}': expected {layout} with {_CHANNEL_COUNTS} channels in axis "
            f"{channel_axis}, got shape {array.shape} (is it {other}?)"
        )
    if layout == "NCHW":
        array = np.transpose(array, (0, 2, 3, 1))
    return np.ascontiguousarray(array)


def _index_or_vector_labels(labels: Any, path: str, field: str) -> np.ndarray:
    if not isinstance(labels, np.ndarray):
        raise DistilledFormatError(f"{path}: field '{field}': expected a label tensor, got {type(labels).__name__}")
    if labels.ndim not in (1, 2):
        raise DistilledFormatError(f"{path}: field '{field}': expected (N,) or (N, C) labels, got shape {labels.shape}")
    return labels


def _num_classes_for(labels: np.ndarray, num_classes: int | None, path: str, field: str) -> int:
    """Vector labels fix the class count; index labels default to max + 1. Either way at most
    MAX_CLASSES (errors.py): a class count sizes what is derived from it, so one corrupt label
    must not decide how much memory a reader takes."""
    if num_classes is not None:
        return check_class_count(num_classes, path, "num_classes", DistilledFormatError)
    if labels.ndim == 2:
        return check_class_count(labels.shape[1], path, f"{field} (label vector length)", DistilledFormatError)
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DistilledFormatError(f"{path}: field '{field}': expected integer class indices, got dtype {labels.dtype}")
    largest = int(labels.max())
    if largest >= MAX_CLASSES:
        raise DistilledFormatError(f"{path}: field '{field}': class index {largest}, expected class indices in "
                                   f"[0, {MAX_CLASSES}) (at most {MAX_CLASSES} classes)")
    return largest + 1


def _load_torch(path: str) -> Any:
    try:
        return load_torch_file(path)
    except TorchFileError as err:
        raise DistilledFormatError(str(err)) from None


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """All arrays of an npz, eagerly (so truncation shows here), never unpickling; each member
    checked against the array cap before it is read."""
    return read_npz(path, DistilledFormatError)


def _require_keys(arrays: Mapping[str, Any], keys: tuple[str, ...], path: str) -> None:
    for key in keys:
        if key not in arrays:
            raise DistilledFormatError(f"{path}: field '{key}' is missing (found {sorted(arrays)})")


# ---------------------------------------------------------------------------------------
# Readers, one per published format
# ---------------------------------------------------------------------------------------


def _pair_paths(path: str) -> tuple[str, str]:
    if os.path.isdir(path):
        return os.path.join(path, "images_best.pt"), os.path.join(path, "labels_best.pt")
    folder, name = os.path.split(path)
    match = re.fullmatch(r"images_(.*\.pt)", name)
    if not match:
        raise DistilledFormatError(f"{path}: expected a folder with images_best.pt or an images_*.pt file")
    return path, os.path.join(folder, "labels_" + match.group(1))


def _guess_pair_source(path: str) -> tuple[str, str]:
    """The heuristic documented in the module docstring: 'frepo' in the name -> FRePo."""
    name = os.path.basename(os.path.normpath(path if os.path.isdir(path) else os.path.dirname(path) or "."))
    candidates = (name, os.path.basename(path))
    if any("frepo" in c.lower() for c in candidates):
        return "frepo", f"source 'frepo' guessed from the name '{name}' (override with source=)"
    return "mtt", "source 'mtt' assumed for the reference-code layout (override with source=)"


@_input_errors
def read_pt_pair(
    path: str | os.PathLike,
    *,
    source: str | None = None,
    preprocessing: str | None = None,
    num_classes: int | None = None,
) -> DistilledSet:
    """MTT / reference-code ``images_best.pt`` + ``labels_best.pt`` (NCHW -> NHWC).

    Labels may be int64 indices (MTT) or float (N, C) learned vectors (FRePo sets
    republished in this layout); the source is guessed from the name unless given.
    """
    path = os.fspath(path)
    _check_source(source, SOURCES, path)
    images_path, labels_path = _pair_paths(path)
    for field, file in (("images", images_path), ("labels", labels_path)):
        if not os.path.isfile(file):
            raise DistilledFormatError(f"{file}: field '{field}': file is missing")
    if source is None:
        source, notes = _guess_pair_source(path)
    else:
        notes = f"source '{source}' given explicitly"
    images = _to_nhwc(_load_torch(images_path), "NCHW", images_path, "images")
    labels = _index_or_vector_labels(_load_torch(labels_path), labels_path, "labels")
    if labels.ndim == 2:
        notes += "; labels are learned (N, C) vectors"
    return DistilledSet(
        images=images,
        labels=labels,
        num_classes=_num_classes_for(labels, num_classes, labels_path, "labels"),
        preprocessing=_resolve_preprocessing(preprocessing, source, path, layout_space=REFERENCE_CODE_SPACE),
        provenance=_provenance("pt_pair", source, path, {"images": images_path, "labels": labels_path}, notes),
    )


@_input_errors
def read_dc_res(
    path: str | os.PathLike,
    *,
    experiment: int = 0,
    preprocessing: str | None = None,
    num_classes: int | None = None,
) -> DistilledSet:
    """DC / DSA / DM ``res_*.pt``: ``['data'][experiment] = [images NCHW, labels int64]``."""
    path = os.fspath(path)
    content = _load_torch(path)
    if not isinstance(content, dict) or "data" not in content:
        raise DistilledFormatError(
            f"{path}: field 'data' is missing (expected a dict with 'data' = [[images, labels], ...])"
        )
    experiments = content["data"]
    if not isinstance(experiments, (list, tuple)) or not experiments:
        raise DistilledFormatError(f"{path}: field 'data': expected a non-empty list of [images, labels]")
    if isinstance(experiment, bool) or not isinstance(experiment, int) or not 0 <= experiment < len(experiments):
        raise DistilledFormatError(
            f"{path}: field 'data[{experiment}]': experiment index out of range (the file holds {len(experiments)})"
        )
    entry = experiments[experiment]
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise DistilledFormatError(f"{path}: field 'data[{experiment}]': expected [images, labels]")
    images = _to_nhwc(entry[0], "NCHW", path, f"data[{experiment}][0]")
    labels = _index_or_vector_labels(entry[1], path, f"data[{experiment}][1]")
    return DistilledSet(
        images=images,
        labels=labels,
        num_classes=_num_classes_for(labels, num_classes, path, f"data[{experiment}][1]"),
        preprocessing=_resolve_preprocessing(preprocessing, "dc", path),
        provenance=_provenance(
            "dc_res", "dc", path, {"images": path, "labels": path},
            f"experiment {experiment} of {len(experiments)}",
        ),
    )


def _find_proto_paths(tree: Any) -> list[tuple[str, ...]]:
    """Every key path under which a dict holds both 'x_proto' and 'y_proto' (iterative: a
    checkpoint may nest as deep as msgpack allows)."""
    found = []
    stack = [((), tree)]
    while stack:  # depth first, in key order, as a recursive walk would go
        prefix, node = stack.pop()
        if isinstance(node, dict):
            if "x_proto" in node and "y_proto" in node:
                found.append(prefix)
            stack.extend((prefix + (str(key),), value) for key, value in reversed(list(node.items())))
    return found


# Flax's msgpack layout (flax.serialization): ndarrays and numpy scalars are ext types holding
# msgpack (shape, dtype name, raw C-order bytes); arrays over 1 GiB are split into a dict of
# 1-D chunks. restore_msgpack reads exactly that, with bounds flax's msgpack_restore lacks.
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"
_MSGPACK_MAX_DEPTH = 1024  # msgpack's own nesting limit
_MSGPACK_SLOT_BYTES = 8  # a list slot msgpack preallocates per declared entry


class _MsgpackError(DistilledFormatError):
    pass


def _msgpack_dtype(name: Any) -> np.dtype:
    if not isinstance(name, bytes):
        raise _MsgpackError(f"an array's dtype name is {type(name).__name__}, expected a string")
    text = name.decode("ascii")
    if text == "bfloat16":
        import ml_dtypes  # ships with jax; what flax writes bfloat16 arrays as

        return np.dtype(ml_dtypes.bfloat16)
    dtype = np.dtype(text)
    if (
        dtype.hasobject
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.kind == "V"
        or dtype.itemsize == 0
    ):
        raise _MsgpackError(f"refusing array dtype {text!r} (only plain numeric and string dtypes)")
    return dtype


def _msgpack_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > 32 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape
    ):
        raise _MsgpackError(f"bad array shape {shape!r}")
    return tuple(shape)


def _check_array_bytes(shape: tuple[int, ...], dtype: np.dtype, cap: int) -> int:
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > cap:
        raise _MsgpackError(
            f"an array declares shape {shape} of {dtype.name} = {nbytes} bytes, over the cap of {cap} bytes "
            "on one array (DISTILL_JAX_MAX_ARRAY_BYTES)"
        )
    return nbytes


def _msgpack_ndarray(data: bytes, cap: int) -> np.ndarray:
    import msgpack

    fields = msgpack.unpackb(data, raw=True, max_array_len=64, max_map_len=0, max_str_len=256,
                             max_bin_len=len(data), max_ext_len=0)
    if not isinstance(fields, (list, tuple)) or len(fields) != 3:
        raise _MsgpackError("an ndarray entry is not (shape, dtype, bytes)")
    shape, dtype_name, buffer = fields
    shape, dtype = _msgpack_shape(shape), _msgpack_dtype(dtype_name)
    nbytes = _check_array_bytes(shape, dtype, cap)
    if not isinstance(buffer, bytes) or len(buffer) != nbytes:
        got = len(buffer) if isinstance(buffer, bytes) else type(buffer).__name__
        raise _MsgpackError(f"an array declares shape {shape} of {dtype.name} = {nbytes} bytes but holds {got}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _unchunk(node: dict, cap: int) -> np.ndarray:
    shape_entries, chunk_entries = node.get("shape"), node.get("chunks")
    if not isinstance(shape_entries, dict) or not isinstance(chunk_entries, dict) or not chunk_entries:
        raise _MsgpackError("a chunked array lacks its 'shape' or 'chunks'")
    shape = _msgpack_shape([shape_entries[str(i)] for i in range(len(shape_entries))])
    chunks = [chunk_entries[str(i)] for i in range(len(chunk_entries))]
    if not all(isinstance(c, np.ndarray) and c.ndim == 1 and c.dtype == chunks[0].dtype for c in chunks):
        raise _MsgpackError("a chunked array's chunks are not 1-D arrays of one dtype")
    nbytes = _check_array_bytes(shape, chunks[0].dtype, cap)
    held = sum(c.nbytes for c in chunks)
    if held != nbytes:
        raise _MsgpackError(f"a chunked array declares shape {shape} ({nbytes} bytes) but its chunks hold {held}")
    return np.concatenate(chunks).reshape(shape)


def _unchunk_tree(tree: Any, cap: int) -> Any:
    """flax.serialization._unchunk_array_leaves_in_place, iteratively and checked."""
    if isinstance(tree, dict) and _CHUNKED in tree:
        return _unchunk(tree, cap)
    stack = [tree] if isinstance(tree, dict) else []
    while stack:
        node = stack.pop()
        for key, value in node.items():
            if isinstance(value, dict):
                if _CHUNKED in value:
                    node[key] = _unchunk(value, cap)
                else:
                    stack.append(value)
    return tree


def _msgpack_options(length: int, cap: int) -> dict:
    """msgpack's limits for a checkpoint of ``length`` bytes, and the hook that checks its arrays."""
    import msgpack

    containers = min(length, max(1024, cap // (16 * _MSGPACK_MAX_DEPTH * _MSGPACK_SLOT_BYTES)))

    def ext_hook(code: int, data: bytes):
        if code == _EXT_NDARRAY:
            return _msgpack_ndarray(data, cap)
        if code == _EXT_NPSCALAR:
            return _msgpack_ndarray(data, cap)[()]
        if code == _EXT_COMPLEX:
            real, imag = msgpack.unpackb(
                data, max_array_len=2, max_map_len=0, max_str_len=0, max_bin_len=0, max_ext_len=0
            )
            return complex(real, imag)
        return msgpack.ExtType(code, data)

    # no entry can be longer than the payload; arrays are checked in ext_hook
    return dict(ext_hook=ext_hook, raw=False, strict_map_key=False, max_str_len=length, max_bin_len=length,
                max_ext_len=length, max_array_len=containers, max_map_len=containers)


@contextlib.contextmanager
def _msgpack_errors(path: str):
    import msgpack

    try:
        yield
    except _MsgpackError as err:
        raise DistilledFormatError(f"{path}: {err}") from None
    except InputFileError:
        raise
    except MALFORMED_ERRORS + (msgpack.UnpackException,) as err:
        raise DistilledFormatError(f"{path}: truncated or corrupt msgpack checkpoint ({describe_error(err)})") from None


def restore_msgpack(payload: bytes, path: str) -> Any:
    """Decode a Flax msgpack checkpoint (as ``flax.serialization.msgpack_restore``) with bounds.

    Container lengths are limited (to the payload's length, and to cap / 128 KiB entries, at
    least 1024) so that the lists msgpack preallocates for declared entries, nested to its
    depth limit of 1024, take at most 1/16 of the array cap; strings, binaries and ext entries
    at most the payload's length; each array's declared shape x itemsize must equal its bytes
    and fit the cap. Raises :class:`DistilledFormatError` naming ``path``.
    """
    import msgpack

    cap = max_array_bytes()
    with _msgpack_errors(path):
        tree = msgpack.unpackb(payload, **_msgpack_options(len(payload), cap))
        return _unchunk_tree(tree, cap)


def read_msgpack_file(path: str) -> Any:
    """:func:`restore_msgpack` of a file, which is decoded whole and so must fit the array cap: its
    size is checked before a byte is read, and it is read once, in blocks, into the decoder's
    buffer (sized to the file up front), decoding as it goes; bytes after the checkpoint's data are
    refused as soon as its data ends, neither read nor copied."""
    import msgpack

    cap = max_array_bytes()
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise DistilledFormatError(f"{path}: cannot read it ({describe_error(err)})") from None
    if size > cap:
        raise DistilledFormatError(
            f"{path}: {size} bytes; a msgpack checkpoint is decoded whole, so it may take at most the cap of "
            f"{cap} bytes on one array (DISTILL_JAX_MAX_ARRAY_BYTES)"
        )
    if size == 0:
        raise DistilledFormatError(f"{path}: empty file, expected a msgpack checkpoint")
    with _msgpack_errors(path):
        unpacker = msgpack.Unpacker(None, read_size=size, max_buffer_size=size, **_msgpack_options(size, cap))
        tree, done = None, False
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                unpacker.feed(block)  # BufferFull if the file grew since its size was checked
                try:  # the decoder resumes where it stopped: a checkpoint that ends early is found early
                    tree, done = unpacker.unpack(), True
                    break
                except msgpack.OutOfData:
                    continue
        if not done:
            raise _MsgpackError("truncated or corrupt msgpack checkpoint (the file ends before its data does)")
        if unpacker.tell() != size:
            raise _MsgpackError(f"{size - unpacker.tell()} bytes after the checkpoint's data (expected one msgpack "
                                "object filling the file)")
        return _unchunk_tree(tree, cap)


@_input_errors
def read_flax_msgpack(
    path: str | os.PathLike,
    *,
    source: str | None = None,
    preprocessing: str | None = None,
    num_classes: int | None = None,
) -> DistilledSet:
    """FRePo / RCIG Flax checkpoint: ``params/x_proto`` (NHWC), ``params/y_proto`` (N, C).

    RCIG keeps the images it evaluates under ``ema_average``; a checkpoint with such a
    subtree is read as RCIG from there unless ``source='frepo'`` asks for ``params``.
    """
    path = os.fspath(path)
    _check_source(source, ("frepo", "rcig"), path)
    if not os.path.isfile(path):
        raise DistilledFormatError(f"{path}: no such file")
    tree = read_msgpack_file(path)
    candidates = _find_proto_paths(tree)
    if not candidates:
        raise DistilledFormatError(f"{path}: field 'params/x_proto' (and 'params/y_proto') not found in the checkpoint")
    ema = [c for c in candidates if "ema_average" in c]
    plain = [c for c in candidates if "ema_average" not in c]
    if source is None:
        source = "rcig" if ema else "frepo"
    chosen = (ema if source == "rcig" else plain) or candidates
    key_path = min(chosen, key=len)
    group = tree
    for key in key_path:
        group = group[key]
    where = "/".join(key_path + ("",))
    images = _to_nhwc(group["x_proto"], "NHWC", path, f"{where}x_proto")
    labels = _index_or_vector_labels(group["y_proto"], path, f"{where}y_proto")
    return DistilledSet(
        images=images,
        labels=labels,
        num_classes=_num_classes_for(labels, num_classes, path, f"{where}y_proto"),
        preprocessing=_resolve_preprocessing(preprocessing, source, path),
        provenance=_provenance(
            "flax_msgpack", source, path, {"images": path, "labels": path},
            f"read from '{where}x_proto' / '{where}y_proto'",
        ),
    )


def _read_npz_images_labels(
    path: str, fmt: str, source: str, image_key: str, label_key: str, layout: str,
    preprocessing: str | None, num_classes: int | None,
) -> DistilledSet:
    arrays = _read_npz(path)
    _require_keys(arrays, (image_key, label_key), path)
    images = _to_nhwc(arrays[image_key], layout, path, image_key)
    labels = _index_or_vector_labels(arrays[label_key], path, label_key)
    return DistilledSet(
        images=images,
        labels=labels,
        num_classes=_num_classes_for(labels, num_classes, path, label_key),
        preprocessing=_resolve_preprocessing(preprocessing, source, path),
        provenance=_provenance(fmt, source, path, {"images": path, "labels": path}, f"{layout} npz"),
    )


@_input_errors
def read_frepo_npz(path, *, preprocessing: str | None = None, num_classes: int | None = None) -> DistilledSet:
    """FRePo npz export: ``image`` NHWC, ``label`` learned (N, C)."""
    return _read_npz_images_labels(
        os.fspath(path), "frepo_npz", "frepo", "image", "label", "NHWC", preprocessing, num_classes
    )


@_input_errors
def read_kip_npz(path, *, preprocessing: str | None = None, num_classes: int | None = None) -> DistilledSet:
    """KIP npz: ``images`` NHWC, ``labels`` (N, C)."""
    return _read_npz_images_labels(
        os.fspath(path), "kip_npz", "kip", "images", "labels", "NHWC", preprocessing, num_classes
    )


@_input_errors
def read_rfad_npz(path, *, preprocessing: str | None = None, num_classes: int | None = None) -> DistilledSet:
    """RFAD npz: ``images`` NCHW, ``labels`` (N, C)."""
    return _read_npz_images_labels(
        os.fspath(path), "rfad_npz", "rfad", "images", "labels", "NCHW", preprocessing, num_classes
    )


# ---------------------------------------------------------------------------------------
# The project's own format
# ---------------------------------------------------------------------------------------


def save_distilled(dset: DistilledSet, path: str | os.PathLike) -> str:
    """Write ``dset`` as one npz (images, labels, JSON metadata), whole (``atomic.write_with``).

    Returns the path written. The metadata keeps the set's provenance, so a set read
    back records where it first came from (``provenance['derived_from']``).
    """
    path = os.fspath(path)
    metadata = {
        "format": "distill_jax",
        "format_version": FORMAT_VERSION,
        "num_classes": dset.num_classes,
        "preprocessing": dset.preprocessing,
        "label_kind": dset.label_kind,
        "image_layout": "NHWC",
        "provenance": dset.provenance,
    }
    try:
        metadata_json = json.dumps(metadata, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise DistilledFormatError(f"{path}: field 'provenance' is not JSON-serialisable ({err})") from None
    atomic.write_with(path, lambda f: np.savez(f, images=dset.images, labels=dset.labels,
                                              metadata=np.array(metadata_json)))
    return path


@_input_errors
def read_distill_jax(path, *, preprocessing: str | None = None, num_classes: int | None = None) -> DistilledSet:
    """Read a file written by :func:`save_distilled`."""
    path = os.fspath(path)
    arrays = _read_npz(path)
    _require_keys(arrays, ("images", "labels", "metadata"), path)
    try:
        metadata = json.loads(str(arrays["metadata"][()]))
    except (ValueError, TypeError, IndexError, RecursionError) as err:
        raise DistilledFormatError(f"{path}: field 'metadata': not valid JSON ({err})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != "distill_jax":
        raise DistilledFormatError(f"{path}: field 'metadata': expected a distill_jax metadata object")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DistilledFormatError(
            f"{path}: field 'metadata.format_version': got {version!r}, this reader handles up to {FORMAT_VERSION}"
        )
    for key in ("num_classes", "preprocessing"):
        if key not in metadata:
            raise DistilledFormatError(f"{path}: field 'metadata.{key}' is missing")
    if num_classes is None:
        num_classes = check_class_count(metadata["num_classes"], path, "metadata.num_classes", DistilledFormatError)
    else:
        num_classes = check_class_count(num_classes, path, "num_classes", DistilledFormatError)
    stored = metadata.get("provenance")
    stored = stored if isinstance(stored, dict) else {}
    provenance = _provenance("distill_jax", stored.get("source") or "unknown", path, {"images": path, "labels": path})
    provenance["derived_from"] = stored
    return DistilledSet(
        images=_to_nhwc(arrays["images"], "NHWC", path, "images"),
        labels=arrays["labels"],
        num_classes=num_classes,
        preprocessing=metadata["preprocessing"] if preprocessing is None else preprocessing,
        provenance=provenance,
    )


# ---------------------------------------------------------------------------------------
# Detection and the single entry point
# ---------------------------------------------------------------------------------------

_READERS: dict[str, Callable[..., DistilledSet]] = {
    "pt_pair": read_pt_pair,
    "dc_res": read_dc_res,
    "flax_msgpack": read_flax_msgpack,
    "frepo_npz": read_frepo_npz,
    "kip_npz": read_kip_npz,
    "rfad_npz": read_rfad_npz,
    "distill_jax": read_distill_jax,
}


def _npz_keys(path: str) -> set[str]:
    return npz_keys(path, DistilledFormatError)


def _npz_image_shape(path: str, key: str) -> tuple[int, ...]:
    """Shape of one npz array from its header alone."""
    shape, _ = npz_header(path, key, DistilledFormatError)
    return shape


def detect_format(path: str | os.PathLike) -> str:
    """Name the format of ``path`` (one of ``FORMATS``) from names, keys and layout."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "images_best.pt")):
            return "pt_pair"
        raise DistilledFormatError(f"{path}: unknown format: a folder needs images_best.pt + labels_best.pt")
    if not os.path.exists(path):
        raise DistilledFormatError(f"{path}: no such file or folder")
    name = os.path.basename(path)
    if re.fullmatch(r"images_.*\.pt", name):
        return "pt_pair"
    if re.fullmatch(r"res_.*\.pth?", name):
        return "dc_res"
    if name.endswith(".msgpack") or re.fullmatch(r"checkpoint_\d+", name):
        return "flax_msgpack"
    if name.endswith(".npz"):
        keys = _npz_keys(path)
        if {"images", "labels", "metadata"} <= keys:
            return "distill_jax"
        if {"image", "label"} <= keys:
            return "frepo_npz"
        if {"images", "labels"} <= keys:
            layout = _layout_of(_npz_image_shape(path, "images"))
            if layout is None:
                raise DistilledFormatError(
                    f"{path}: field 'images': cannot tell KIP (NHWC) from RFAD (NCHW) by layout; "
                    "pass format='kip_npz' or format='rfad_npz'"
                )
            return "kip_npz" if layout == "NHWC" else "rfad_npz"
        raise DistilledFormatError(
            f"{path}: unknown format: npz keys {sorted(keys)} match no known distilled-set layout"
        )
    raise DistilledFormatError(
        f"{path}: unknown format (expected a folder with images_best.pt, images_*.pt, res_*.pt, "
        "*.msgpack / checkpoint_<step>, or *.npz); pass format= (CLI: --format) to force one"
    )


def load_distilled(path: str | os.PathLike, format: str | None = None, **opts) -> DistilledSet:
    """Read any supported distilled set; ``format=None`` auto-detects it.

    Options, where the format takes them: ``preprocessing`` (override the source's
    default pixel space), ``num_classes`` (index labels: default max + 1), ``source``
    (``pt_pair``: any of ``SOURCES``; ``flax_msgpack``: 'frepo' or 'rcig'),
    ``experiment`` (``dc_res``: which experiment, default 0).
    """
    path = os.fspath(path)
    if format is None:
        format = detect_format(path)
    if format not in _READERS:
        raise DistilledFormatError(f"{path}: unknown format {format!r}; expected one of {FORMATS}")
    reader = _READERS[format]
    accepted = set(inspect.signature(reader).parameters) - {"path"}
    unexpected = sorted(set(opts) - accepted)
    if unexpected:
        raise DistilledFormatError(
            f"{path}: option(s) {unexpected} do not apply to format '{format}' (it takes {sorted(accepted)})"
        )
    return reader(path, **opts)
