"""Real image datasets behind one interface (docs/method.md §4).

Every source returns the same `Dataset`: uint8 NHWC images (4x smaller than float32, so
a whole training split fits in memory), int64 labels and a `DatasetInfo` naming the
classes. Preprocessing lives elsewhere (`preprocess.py`) so that the same raw pixels can
be put through whichever transform a distilled set was made in.

Sources (`load_dataset(name, split, data_dir=None, **opts)`):

- ``'fashion_mnist'``, ``'mnist'``: IDX files (gz or raw). Fashion-MNIST defaults to the
  Debian package ``dataset-fashion-mnist`` at /usr/share/datasets/fashion-mnist.
- ``'cifar10'``, ``'cifar100'``: the official archives (binary or python version,
  `cifar.py`) in the data root; ``source='tfds'`` (and any ``'tfds:<name>'``) reads
  tensorflow-datasets through ``tfds.data_source`` (no TensorFlow once prepared).
- ``'cifar10_jpeg'``: the CIFAR-10 (JPEG) npz files in the data root (`data_root()`).
- ``'npz'``: any ``.npz`` with ``image`` (uint8 NHWC) and ``label``.
- ``'tiny_imagenet'``: the standard Tiny-ImageNet-200 folder layout.
- ``'image_folder'``: ``root/<split>/<class>/*.png|jpg``.

``source=`` overrides a name's default source, e.g.
``load_dataset('mnist', 'train', source='tfds')``.

File readers bound what they allocate: an IDX file's dimensions, an npz member's
declared size, compression ratio and npy header, and an image's pixel count are checked
against the array cap (`distill_jax.errors.max_array_bytes()`) before anything is read, a class
count (the largest label + 1, or the class names) may be at most `distill_jax.errors.MAX_CLASSES`,
and a malformed file raises `DataFormatError` naming it (an `InputFileError`), never another
exception. An unknown dataset name raises `DatasetNameError`, a subset larger than a class
`SubsetError` (both user errors). `known_signature(name)` gives the image shape and class count
a registered dataset always has, `datasets_with(shape, classes)` the datasets a set fits.
"""
from __future__ import annotations

import dataclasses
import gzip
import math
import pathlib
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from distill_jax import paths
from distill_jax.data import cifar
from distill_jax.errors import MAX_CLASSES, InputFileError, UserError, check_class_count, max_array_bytes
from distill_jax.formats.torch_pickle import MALFORMED_ERRORS, describe_error, npz_keys, read_npz

PathLike = str | pathlib.Path

DATA_ROOT_ENV = paths.SUBFOLDER_ENVS["data"]


def data_root() -> pathlib.Path:
    """The folder where data is looked for when no data_dir is given: dataset files (e.g.
    cifar10_jpeg_{train,test}.npz), published distilled sets (`distilled/<set>/`) and published
    teachers (`teachers/<set>_convnet/`). $DISTILL_JAX_DATA, else the `data/` folder of the
    cache root (`paths.py`; by default ~/.cache/distill_jax/data)."""
    return paths.data_root()


DEBIAN_FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataNotFoundError(InputFileError, FileNotFoundError):
    """The data for a dataset is not on this machine; the message says how to get it."""


class DataFormatError(InputFileError):
    """A data file exists but does not hold what its format promises, or is larger than allowed."""


class DatasetNameError(UserError, ValueError):
    """A dataset name that is not registered (the message names where it came from and the known names)."""


class SubsetError(UserError, ValueError):
    """A subset that the dataset cannot give (more images per class than a class holds)."""


# --------------------------------------------------------------------------- containers


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (H, W, C)
    split: str
    source: str


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """uint8 NHWC images, int64 labels in [0, num_classes), and what they are."""

    images: np.ndarray
    labels: np.ndarray
    info: DatasetInfo

    def __post_init__(self):
        where = f"dataset {self.info.name!r} split {self.info.split!r}"
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataFormatError(f"{where}: images must be a uint8 numpy array (N, H, W, C), got "
                                  f"{type(self.images).__name__} {getattr(self.images, 'dtype', '?')} "
                                  f"{getattr(self.images, 'shape', '?')}")
        if not isinstance(self.labels, np.ndarray) or self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise DataFormatError(f"{where}: labels must be an int64 numpy array (N,), got "
                                  f"{type(self.labels).__name__} {getattr(self.labels, 'dtype', '?')} "
                                  f"{getattr(self.labels, 'shape', '?')}")
        if len(self.images) != len(self.labels):
            raise DataFormatError(f"{where}: {len(self.images)} images but {len(self.labels)} labels")
        if tuple(self.images.shape[1:]) != tuple(self.info.image_shape):
            raise DataFormatError(f"{where}: images of shape {self.images.shape[1:]} but info.image_shape "
                                  f"is {self.info.image_shape}")
        if len(self.info.class_names) != self.info.num_classes:
            raise DataFormatError(f"{where}: {len(self.info.class_names)} class names for "
                                  f"{self.info.num_classes} classes")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.info.num_classes):
            raise DataFormatError(f"{where}: labels must lie in [0, {self.info.num_classes}), got "
                                  f"[{self.labels.min()}, {self.labels.max()}]")

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> np.ndarray:
        """Images per class, shape (num_classes,)."""
        return np.bincount(self.labels, minlength=self.info.num_classes)

    def select(self, indices: np.ndarray) -> "Dataset":
        """The images at `indices`, in that order, with the same info."""
        indices = np.asarray(indices, dtype=np.int64)
        return Dataset(self.images[indices], self.labels[indices], self.info)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], the input every preprocessing recipe expects."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"to_float: images must be uint8, got {images.dtype}")
    return images.astype(np.float32) / np.float32(255.0)


def _make_dataset(images: np.ndarray, labels: np.ndarray, *, name: str, split: str, source: str,
                  class_names: Optional[Sequence[str]], num_classes: Optional[int] = None) -> Dataset:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"dataset {name!r} split {split!r}: labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.int64)
    where = f"dataset {name!r} split {split!r}"
    if class_names is None:
        if num_classes is None:  # from the labels: the largest one must not decide the memory taken
            largest = int(labels.max()) if len(labels) else -1
            if largest >= MAX_CLASSES:
                raise DataFormatError(f"{where}: field 'labels': class index {largest}, expected class indices in "
                                      f"[0, {MAX_CLASSES}) (at most {MAX_CLASSES} classes)")
            num_classes = largest + 1
        else:
            num_classes = check_class_count(num_classes, where, "num_classes", DataFormatError)
        class_names = tuple(str(i) for i in range(num_classes))
    elif len(class_names) > MAX_CLASSES:
        raise DataFormatError(f"{where}: field 'class_names': {len(class_names)} names, expected at most {MAX_CLASSES}")
    class_names = tuple(str(c) for c in class_names)
    info = DatasetInfo(name=name, num_classes=len(class_names), class_names=class_names,
                       image_shape=tuple(int(d) for d in images.shape[1:]), split=split, source=source)
    return Dataset(np.ascontiguousarray(images), labels, info)


# --------------------------------------------------------------------------- IDX (MNIST family)

_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: PathLike) -> np.ndarray:
    """Reads one IDX file (gzip-compressed when its name ends in .gz).

    Header: two zero bytes, a type code, the number of dimensions, then each dimension as
    a big-endian uint32; the payload must hold exactly their product of items. The declared
    size is checked against the array cap before the payload is read (a gzip bomb stops there).
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataFormatError(
                    f"IDX file {path}: bad magic {head[:4].hex() or '(empty)'}, expected 0000<type><ndim>"
                )
            type_code, ndim = head[2], head[3]
            if type_code not in _IDX_DTYPES:
                raise DataFormatError(f"IDX file {path}: unknown type code 0x{type_code:02x} in the magic number")
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataFormatError(f"IDX file {path}: header promises {ndim} dimensions but the file has only "
                                      f"{4 + len(dims_raw)} bytes")
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4", count=ndim))
            dtype = _IDX_DTYPES[type_code]
            expected = math.prod(dims) * dtype.itemsize
            cap = max_array_bytes()
            if expected > cap:
                raise DataFormatError(f"IDX file {path}: dimensions {dims} declare {expected} bytes, over the cap of "
                                      f"{cap} bytes on one array (DISTILL_JAX_MAX_ARRAY_BYTES)")
            raw = f.read(expected)
            extra = f.read(1 << 20) if len(raw) == expected else b""
    except DataFormatError:
        raise
    except MALFORMED_ERRORS as exc:
        raise DataFormatError(f"IDX file {path}: cannot read it ({describe_error(exc)})") from None
    if len(raw) != expected or extra:
        found = f"{len(raw) + len(extra)}{' or more' if len(extra) == 1 << 20 else ''}"
        raise DataFormatError(f"IDX file {path}: dimensions {dims} need {expected} bytes of data, found {found}")
    data = np.frombuffer(raw, dtype=dtype).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(data_dir: pathlib.Path, stem: str) -> pathlib.Path:
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(f"IDX file {data_dir / stem}(.gz) not found")


def _load_idx(name: str, split: str, data_dir: Optional[PathLike], *, class_names=None,
              how_to_get: str = "pass data_dir=<folder with the IDX files>") -> Dataset:
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"dataset {name!r}: split must be one of {sorted(prefixes)}, got {split!r}")
    if data_dir is None:
        raise DataNotFoundError(f"dataset {name!r}: no data_dir given and no default location; {how_to_get}")
    data_dir = pathlib.Path(data_dir)
    if not data_dir.is_dir():
        raise DataNotFoundError(f"dataset {name!r}: folder {data_dir} does not exist; {how_to_get}")
    prefix = prefixes[split]
    try:
        images_path = _find_idx(data_dir, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(data_dir, f"{prefix}-labels-idx1-ubyte")
    except DataNotFoundError as exc:
        raise DataNotFoundError(f"dataset {name!r}: {exc}; {how_to_get}") from None
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataFormatError(f"IDX file {images_path}: expected uint8 images (N, H, W) (magic 0x00000803), "
                              f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataFormatError(f"IDX file {labels_path}: expected uint8 labels (N,) (magic 0x00000801), "
                              f"got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataFormatError(f"IDX files {images_path} and {labels_path}: {len(images)} images but "
                              f"{len(labels)} labels")
    if class_names is not None and len(labels) and labels.max() >= len(class_names):
        raise DataFormatError(f"IDX file {labels_path}: label {labels.max()} outside [0, {len(class_names)})")
    return _make_dataset(images[..., None], labels, name=name, split=split, source="idx",
                         class_names=class_names)


# --------------------------------------------------------------------------- tensorflow-datasets


def _tfds_prepare_hint(tfds_name: str, data_dir: Optional[PathLike]) -> str:
    dir_arg = f", data_dir={str(data_dir)!r}" if data_dir is not None else ""
    return ("install the tfds-prepare extra (pip install -e .[tfds-prepare], which brings tensorflow-cpu) and, "
            "on a machine with network, run: python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder({tfds_name!r}{dir_arg}, file_format='array_record').download_and_prepare()\" "
            "(array_record is the format tfds.data_source can read without TensorFlow)")


def _load_tfds(name: str, split: str, data_dir: Optional[PathLike], *, class_names=None,
               image_key: str = "image", label_key: str = "label") -> Dataset:
    """Reads prepared data through tfds.data_source; never downloads (no network at run time)."""
    import tensorflow_datasets as tfds  # lazy: importing tfds takes seconds

    data_dir = None if data_dir is None else str(data_dir)
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - tfds raises many types; sort them by asking the builder
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            raise DataNotFoundError(f"tfds dataset {name!r} is not prepared in {builder.data_dir}; "
                                    f"{_tfds_prepare_hint(name, data_dir)}") from exc
        raise DataFormatError(
            f"tfds dataset {name!r} at {builder.data_dir} cannot be read without TensorFlow "
            f"({exc}); delete {builder.data_dir} (or pick another data_dir) and prepare it as array_record: "
            f"{_tfds_prepare_hint(name, data_dir)}"
        ) from exc
    features = source.dataset_info.features
    for key in (image_key, label_key):
        if key not in features:
            raise DataFormatError(f"tfds dataset {name!r}: no feature {key!r}; it has {sorted(features.keys())}")
    if class_names is None:
        class_names = getattr(features[label_key], "names", None)
    images, labels = [], []
    for index in range(len(source)):
        record = source[index]
        images.append(np.asarray(record[image_key]))
        labels.append(int(record[label_key]))
    if not images:
        raise DataFormatError(f"tfds dataset {name!r} split {split!r} is empty")
    images = np.stack(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise DataFormatError(f"tfds dataset {name!r}: feature {image_key!r} holds {images.dtype}, expected uint8")
    return _make_dataset(images, np.asarray(labels, np.int64), name=name, split=split, source="tfds",
                         class_names=class_names)


# --------------------------------------------------------------------------- npz


def _load_npz(name: str, split: str, data_dir: Optional[PathLike], *, file_pattern: str = "{split}.npz",
              image_key: str = "image", label_key: str = "label", class_names=None,
              num_classes: Optional[int] = None, how_to_get: str = "pass data_dir=<folder or .npz file>") -> Dataset:
    """`data_dir` is a folder holding `file_pattern.format(split=split)`, or the .npz file itself."""
    if data_dir is None:
        raise DataNotFoundError(f"dataset {name!r}: no data_dir given; {how_to_get}")
    data_dir = pathlib.Path(data_dir)
    path = data_dir if data_dir.suffix == ".npz" else data_dir / file_pattern.format(split=split)
    if not path.is_file():
        raise DataNotFoundError(f"dataset {name!r} split {split!r}: file {path} not found; {how_to_get}")
    where = f"npz file {path}"
    try:
        present = npz_keys(path, DataFormatError, where=where)
        missing = [k for k in (image_key, label_key) if k not in present]
        if missing:
            raise DataFormatError(f"{where}: no array {missing[0]!r}; it holds {sorted(present)}")
        wanted = {image_key, label_key} | ({"class_names"} if class_names is None else set())
        arrays = read_npz(path, DataFormatError, keys=wanted, where=where)
        images, labels = arrays[image_key], arrays[label_key]
        if class_names is None and "class_names" in arrays:
            names = arrays["class_names"]
            if names.ndim != 1 or names.dtype.kind not in "USiu":
                raise DataFormatError(
                    f"{where}: 'class_names' must be a 1-D array of names, got {names.dtype} {names.shape}"
                )
            class_names = tuple(str(c) for c in names)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise DataFormatError(f"{where}: {image_key!r} must be uint8 NHWC (or NHW), got "
                                  f"{images.dtype} {images.shape}")
        if images.ndim == 3:
            images = images[..., None]
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataFormatError(f"{where}: {label_key!r} must be integer class indices (N,), got "
                                  f"{labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise DataFormatError(f"{where}: {len(images)} images but {len(labels)} labels")
        return _make_dataset(images, labels, name=name, split=split, source="npz", class_names=class_names,
                             num_classes=num_classes)
    except DataFormatError as exc:
        message = str(exc)
        raise DataFormatError(message if message.startswith(where) else f"{where}: {message}") from None
    except MemoryError as exc:
        raise DataFormatError(f"{where}: {describe_error(exc)}") from None


# --------------------------------------------------------------------------- image files


def _read_image(path: pathlib.Path, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            pixels_bytes = width * height * (1 if mode == "L" else 3)
            cap = max_array_bytes()
            if pixels_bytes > cap:
                raise DataFormatError(f"image file {path}: {width}x{height} pixels would take {pixels_bytes} bytes, "
                                      f"over the cap of {cap} bytes on one array (DISTILL_JAX_MAX_ARRAY_BYTES)")
            pixels = np.asarray(img.convert(mode), dtype=np.uint8)
    except DataFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL's decoders raise OSError, SyntaxError, struct.error, ... on bad files
        raise DataFormatError(f"image file {path}: cannot decode it ({describe_error(exc)})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _image_mode(path: pathlib.Path) -> str:
    """'L' for a grayscale image file, else 'RGB' (from the header alone)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return "L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    except Exception as exc:  # noqa: BLE001 - see _read_image
        raise DataFormatError(f"image file {path}: cannot decode it ({describe_error(exc)})") from None


def _read_text(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeError) as exc:
        raise DataFormatError(f"file {path}: cannot read it as text ({describe_error(exc)})") from None


def _read_images(paths: Sequence[pathlib.Path], mode: str) -> np.ndarray:
    """Decodes equally sized images; a size mismatch names the file (no silent resize)."""
    first = _read_image(paths[0], mode)
    total, cap = len(paths) * first.nbytes, max_array_bytes()
    if total > cap:
        raise DataFormatError(f"image files like {paths[0]}: {len(paths)} images of shape {first.shape} would take "
                              f"{total} bytes, over the cap of {cap} bytes on one array (DISTILL_JAX_MAX_ARRAY_BYTES)")
    out = np.empty((len(paths),) + first.shape, np.uint8)
    out[0] = first
    for i, path in enumerate(paths[1:], start=1):
        pixels = _read_image(path, mode)
        if pixels.shape != first.shape:
            raise DataFormatError(f"image file {path}: shape {pixels.shape}, expected {first.shape} "
                                  f"(as {paths[0]})")
        out[i] = pixels
    return out


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _load_tiny_imagenet(name: str, split: str, data_dir: Optional[PathLike], *,
                        class_order: str = "wnids") -> Dataset:
    """Tiny-ImageNet-200 from its standard layout (train/<wnid>/images, val/images + val_annotations.txt).

    `class_order='wnids'` (default) numbers classes in the order of wnids.txt, as the
    distillation codes do; `'sorted'` numbers them by sorted wnid (torchvision ImageFolder).
    Split 'val' (also accepted as 'test': the official test labels are not public, so the
    val split is the test set in every paper).
    """
    how_to_get = ("download and unzip tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) "
                  "and pass data_dir=<.../tiny-imagenet-200>")
    if split not in ("train", "val", "test"):
        raise ValueError(f"dataset {name!r}: split must be 'train', 'val' or 'test' (= val), got {split!r}")
    if class_order not in ("wnids", "sorted"):
        raise ValueError(f"dataset {name!r}: class_order must be 'wnids' or 'sorted', got {class_order!r}")
    if data_dir is None:
        raise DataNotFoundError(f"dataset {name!r}: no data_dir given; {how_to_get}")
    root = pathlib.Path(data_dir)
    wnids_path = root / "wnids.txt"
    if not wnids_path.is_file():
        raise DataNotFoundError(f"dataset {name!r}: {wnids_path} not found; {how_to_get}")
    wnids = [line.strip() for line in _read_text(wnids_path).splitlines() if line.strip()]
    if len(set(wnids)) != len(wnids):
        raise DataFormatError(f"file {wnids_path}: repeated wnids")
    if class_order == "sorted":
        wnids = sorted(wnids)
    index_of = {w: i for i, w in enumerate(wnids)}
    words = {}
    words_path = root / "words.txt"
    if words_path.is_file():
        for line in _read_text(words_path).splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.strip()
    class_names = tuple(words.get(w, w) for w in wnids)

    paths, labels = [], []
    if split == "train":
        for wnid in wnids:
            folder = root / "train" / wnid / "images"
            if not folder.is_dir():
                raise DataNotFoundError(f"dataset {name!r}: folder {folder} not found; {how_to_get}")
            files = _image_files(folder)
            if not files:
                raise DataFormatError(f"dataset {name!r}: no images in {folder}")
            paths += files
            labels += [index_of[wnid]] * len(files)
    else:
        annotations = root / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise DataNotFoundError(f"dataset {name!r}: {annotations} not found; {how_to_get}")
        for lineno, line in enumerate(_read_text(annotations).splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index_of:
                raise DataFormatError(f"file {annotations} line {lineno}: expected '<file>\\t<wnid from wnids.txt>...'"
                                      f", got {line!r}")
            paths.append(root / "val" / "images" / fields[0])
            labels.append(index_of[fields[1]])
        if not paths:
            raise DataFormatError(f"file {annotations}: no annotations")
        for p in paths:
            if not p.is_file():
                raise DataNotFoundError(f"dataset {name!r}: image {p} listed in {annotations} not found")
    images = _read_images(paths, "RGB")
    return _make_dataset(images, np.asarray(labels), name=name, split="val" if split == "test" else split,
                         source="tiny_imagenet", class_names=class_names)


def _load_image_folder(name: str, split: str, data_dir: Optional[PathLike], *, color_mode: str = "auto") -> Dataset:
    """`data_dir/<split>/<class>/*.png|jpg|jpeg`; classes numbered in sorted order.

    `color_mode`: 'rgb', 'grayscale', or 'auto' (grayscale when the first image is).
    """
    if color_mode not in ("auto", "rgb", "grayscale"):
        raise ValueError(f"dataset {name!r}: color_mode must be 'auto', 'rgb' or 'grayscale', got {color_mode!r}")
    if data_dir is None:
        raise DataNotFoundError(f"dataset {name!r}: no data_dir given; pass data_dir=<root with <split>/<class>/>")
    split_dir = pathlib.Path(data_dir) / split
    if not split_dir.is_dir():
        raise DataNotFoundError(f"dataset {name!r}: folder {split_dir} not found; expected "
                                f"{pathlib.Path(data_dir)}/<split>/<class>/*.png|jpg")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataFormatError(f"dataset {name!r}: no class folders in {split_dir}")
    paths, labels = [], []
    for index, cls in enumerate(classes):
        files = _image_files(split_dir / cls)
        if not files:
            raise DataFormatError(f"dataset {name!r}: class folder {split_dir / cls} holds no .png/.jpg images")
        paths += files
        labels += [index] * len(files)
    if color_mode == "auto":
        mode = _image_mode(paths[0])
    else:
        mode = "RGB" if color_mode == "rgb" else "L"
    images = _read_images(paths, mode)
    return _make_dataset(images, np.asarray(labels), name=name, split=split, source="image_folder",
                         class_names=classes)


# --------------------------------------------------------------------------- registry

Loader = Callable[..., Dataset]  # (name, split, data_dir, **opts) -> Dataset

def _load_cifar_archive(name: str, split: str, data_dir: Optional[PathLike]) -> Dataset:
    """CIFAR-10/100 from the official tar.gz (binary or python version) in `data_dir`."""
    folder = pathlib.Path(data_dir) if data_dir is not None else data_root()
    try:
        images, labels, names = cifar.read_archive(name, split, folder)
    except FileNotFoundError as missing:
        raise DataNotFoundError(
            f"dataset {name!r}: neither {missing} found in {folder}; download one from {cifar.DOWNLOAD_PAGE} into "
            f"the data root (${DATA_ROOT_ENV}, else ~/.cache/distill_jax/data) or pass data_dir=<folder>, or read "
            f"prepared tensorflow-datasets data with source='tfds'") from None
    return _make_dataset(images, labels, name=name, split=split, source="cifar_archive", class_names=names)


SOURCES: dict[str, Loader] = {
    "cifar_archive": _load_cifar_archive,
    "idx": _load_idx,
    "tfds": _load_tfds,
    "npz": _load_npz,
    "tiny_imagenet": _load_tiny_imagenet,
    "image_folder": _load_image_folder,
}


@dataclasses.dataclass(frozen=True)
class _DatasetSpec:
    source: str
    data_dir: Optional[pathlib.Path] = None
    # Per-source options; only used when the dataset is read from `source`.
    opts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Options for other sources (e.g. tfds) given through `source=`.
    tfds_name: Optional[str] = None
    # True: the files live in `data_root()` unless a data_dir is given.
    in_data_root: bool = False
    # What every copy of the dataset holds, known without reading it: (H, W, C) and the class count.
    image_shape: Optional[tuple[int, int, int]] = None
    num_classes: Optional[int] = None


_DATASETS: dict[str, _DatasetSpec] = {
    "fashion_mnist": _DatasetSpec(
        "idx", DEBIAN_FASHION_MNIST_DIR,
        {"class_names": FASHION_MNIST_CLASSES,
         "how_to_get": "run `apt-get install dataset-fashion-mnist` (Debian) or pass data_dir=<folder with the "
                       "IDX files>, or use source='tfds'"},
        tfds_name="fashion_mnist", image_shape=(28, 28, 1), num_classes=len(FASHION_MNIST_CLASSES)),
    "mnist": _DatasetSpec(
        "idx", None,
        {"class_names": MNIST_CLASSES,
         "how_to_get": "pass data_dir=<folder with train-images-idx3-ubyte(.gz) etc.>, or use source='tfds'"},
        tfds_name="mnist", image_shape=(28, 28, 1), num_classes=len(MNIST_CLASSES)),
    # Standard CIFAR-10 order, as tfds stores it; given here because tfds only knows the
    # names once the data is prepared.
    # The official archives in the data root; source='tfds' reads tensorflow-datasets instead.
    "cifar10": _DatasetSpec("cifar_archive", tfds_name="cifar10", in_data_root=True, image_shape=(32, 32, 3),
                            num_classes=cifar.ARCHIVES["cifar10"]["num_classes"]),
    "cifar100": _DatasetSpec("cifar_archive", tfds_name="cifar100", in_data_root=True, image_shape=(32, 32, 3),
                             num_classes=cifar.ARCHIVES["cifar100"]["num_classes"]),
    "cifar10_jpeg": _DatasetSpec(
        "npz", None,
        {"file_pattern": "cifar10_jpeg_{split}.npz", "class_names": CIFAR10_CLASSES,
         "how_to_get": f"put cifar10_jpeg_{{train,test}}.npz in the data root (${DATA_ROOT_ENV}, else "
                       "~/.cache/distill_jax/data) or pass data_dir=<folder holding them>"},
        in_data_root=True, image_shape=(32, 32, 3), num_classes=len(CIFAR10_CLASSES)),
    "npz": _DatasetSpec("npz"),
    "tiny_imagenet": _DatasetSpec("tiny_imagenet", image_shape=(64, 64, 3), num_classes=200),
    "image_folder": _DatasetSpec("image_folder"),
}


def register_dataset(name: str, source: str, data_dir: Optional[PathLike] = None, **opts) -> None:
    """Adds (or replaces) a named dataset read from `source` with default `data_dir` and options."""
    if source not in SOURCES:
        raise ValueError(f"register_dataset({name!r}): unknown source {source!r}; known: {sorted(SOURCES)}")
    _DATASETS[name] = _DatasetSpec(source, None if data_dir is None else pathlib.Path(data_dir), dict(opts))


def available_datasets() -> tuple[str, ...]:
    return tuple(sorted(_DATASETS))


def check_dataset_name(name: Any, field: str = "load_dataset") -> str:
    """`name` if `load_dataset` knows it (a registered name or 'tfds:<name>'), else DatasetNameError
    naming `field` (e.g. "config field 'data.dataset'") and the known names."""
    if isinstance(name, str) and (name in _DATASETS or (name.startswith("tfds:") and len(name) > len("tfds:"))):
        return name
    raise DatasetNameError(f"{field}: unknown dataset {name!r}; expected one of {', '.join(available_datasets())}, "
                           "or 'tfds:<name>'")


def known_signature(name: str) -> Optional[tuple[tuple[int, int, int], int]]:
    """((H, W, C), number of classes) that dataset `name` always has, or None where it depends on
    the files (npz, image_folder, tfds:...)."""
    spec = _DATASETS.get(name)
    if spec is None or spec.image_shape is None or spec.num_classes is None:
        return None
    return tuple(spec.image_shape), int(spec.num_classes)


def datasets_with(image_shape: Sequence[int], num_classes: int) -> tuple[str, ...]:
    """The registered datasets whose images have `image_shape` (H, W, C) and `num_classes` classes."""
    wanted = (tuple(int(d) for d in image_shape), int(num_classes))
    return tuple(name for name in available_datasets() if known_signature(name) == wanted)


def load_dataset(name: str, split: str, data_dir: Optional[PathLike] = None, *, source: Optional[str] = None,
                 **opts) -> Dataset:
    """Loads `split` of dataset `name` as uint8 NHWC images and int64 labels.

    `name` is a registered name (see `available_datasets()`) or 'tfds:<tfds name>'.
    `source` overrides the name's default source ('idx', 'tfds', 'npz', 'tiny_imagenet',
    'image_folder'). `data_dir=None` uses the name's default location, if it has one.
    `opts` go to the source's reader (e.g. `class_order` for 'tiny_imagenet').
    Missing data raises `DataNotFoundError` (a FileNotFoundError) saying how to get it.
    """
    if name.startswith("tfds:"):
        if source not in (None, "tfds"):
            raise ValueError(f"load_dataset({name!r}): a 'tfds:' name cannot be read from source {source!r}")
        return _load_tfds(name[len("tfds:"):], split, data_dir, **opts)
    spec = _DATASETS[check_dataset_name(name)]
    source = spec.source if source is None else source
    if source not in SOURCES:
        raise ValueError(f"load_dataset({name!r}): unknown source {source!r}; known: {sorted(SOURCES)}")
    if source == spec.source:
        merged = {**spec.opts, **opts}
        default_dir = data_root() if spec.in_data_root else spec.data_dir
        return SOURCES[source](name, split, default_dir if data_dir is None else data_dir, **merged)
    if source == "tfds":
        return _load_tfds(spec.tfds_name or name, split, data_dir, **opts)
    return SOURCES[source](name, split, data_dir, **opts)


# --------------------------------------------------------------------------- subsets


def class_balanced_subset(dataset: Dataset, *, per_class: Optional[int] = None, fraction: Optional[float] = None,
                          seed: int = 0) -> Dataset:
    """Exactly `per_class` (or round(fraction * class size)) images of every class, sorted by class.

    Each class draws from its own generator seeded by (seed, class), so the choice for one
    class does not depend on the others; within a class the original order is kept.
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("class_balanced_subset: give exactly one of per_class and fraction")
    if per_class is not None and (int(per_class) != per_class or per_class < 1):
        raise ValueError(f"class_balanced_subset: per_class must be a positive integer, got {per_class!r}")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"class_balanced_subset: fraction must be in (0, 1], got {fraction!r}")
    counts = dataset.class_counts()
    if per_class is not None and int(per_class) > counts.min():
        short = int(np.argmin(counts))
        raise SubsetError(f"class_balanced_subset: class {short} ({dataset.info.class_names[short]!r}) of "
                          f"{dataset.info.name!r} {dataset.info.split!r} has {int(counts[short])} images, cannot take "
                          f"{int(per_class)} (expected per_class <= {int(counts.min())})")
    chosen = []
    for cls in range(dataset.info.num_classes):
        members = np.flatnonzero(dataset.labels == cls)
        want = int(per_class) if per_class is not None else int(round(fraction * len(members)))
        if want > len(members) or want == 0:
            raise SubsetError(f"class_balanced_subset: class {cls} ({dataset.info.class_names[cls]!r}) of "
                              f"{dataset.info.name!r} {dataset.info.split!r} has {len(members)} images, "
                              f"cannot take {want}")
        rng = np.random.default_rng([int(seed), cls])
        chosen.append(np.sort(rng.choice(members, size=want, replace=False)))
    return dataset.select(np.concatenate(chosen))
